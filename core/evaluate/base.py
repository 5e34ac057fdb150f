"""What an evaluator is: a spec from the YAML in, a Score per record out."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from core.records import Score


class Evaluator(abc.ABC):
    """Scores one record's output. Deterministic evaluators are free; judges call a model."""

    type: ClassVar[str]
    uses_llm: ClassVar[bool] = False

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.name: str = spec.label
        self.threshold: float = spec.threshold
        self.weight: float = spec.weight

    @abc.abstractmethod
    async def score(self, input_data: dict[str, Any], output: Any) -> Score:
        """Return a Score with value in [0, 1]. Raise EvaluatorError when it cannot score
        (the record is then quarantined at stage `evaluate`)."""

    def prompt_versions(self) -> list[Any]:
        """Templates the evaluator sends to a model (hash, text, path), kept with each run."""
        return []

    def make_score(self, value: float, explanation: str, **extra: Any) -> Score:
        value = min(1.0, max(0.0, float(value)))
        return Score(evaluator=self.name, type=self.type, value=value,
                     passed=value >= self.threshold, threshold=self.threshold,
                     weight=self.weight, explanation=explanation, **extra)
