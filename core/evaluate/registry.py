"""From the pipeline's `evaluate.evaluators` list to ready evaluators.

`EVALUATORS` maps a spec `type` to its class. A class may define
`from_spec(spec, context: BuildContext)` when it needs more than its spec (the pipeline folder
for a schema file, the params for an expression, a model client for a judge); otherwise it is
built as `cls(spec)`. Anything wrong with a spec that only shows when the evaluator is built (an
unreadable schema file, an expression that does not parse) becomes one PipelineError naming
the pipeline file and the key, e.g. `evaluate.evaluators[2].schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import PipelineError
from core.evaluate.base import Evaluator
from core.evaluate.deterministic import (Contains, ExactMatch, Expression, JsonSchema, Length,
                                         OneOf, Range, Regex)
from core.evaluate.judge_models import JudgeModels
from core.evaluate.judges import JUDGES
from core.spec import LoadedSpec

_CLASSES: tuple[type[Evaluator], ...] = (ExactMatch, OneOf, Regex, Contains, JsonSchema, Range,
                                         Length, Expression, *JUDGES)
EVALUATORS: dict[str, type[Evaluator]] = {cls.type: cls for cls in _CLASSES}


@dataclass(frozen=True)
class BuildContext:
    """What an evaluator may need besides its own spec."""

    loaded: LoadedSpec
    params: dict[str, Any] = field(default_factory=dict)
    llm: JudgeModels | None = None  # how LLM judges reach a model


def build_evaluators(loaded: LoadedSpec, params: dict[str, Any] | None = None, *,
                     llm: JudgeModels | None = None) -> list[Evaluator]:
    """One evaluator per spec, in the pipeline's order. Raises PipelineError (one line)."""
    context = BuildContext(loaded=loaded,
                           params=dict(loaded.spec.params if params is None else params), llm=llm)
    evaluators: list[Evaluator] = []
    for index, spec in enumerate(loaded.spec.evaluate.evaluators):
        where = f"evaluate.evaluators[{index}]"
        cls = EVALUATORS.get(spec.type)
        if cls is None:
            raise PipelineError(f"no evaluator is available for type {spec.type!r} "
                                f"(known: {', '.join(sorted(EVALUATORS))})",
                                file=str(loaded.path), key=f"{where}.type")
        try:
            from_spec = getattr(cls, "from_spec", None)
            evaluator = from_spec(spec, context) if from_spec is not None else cls(spec)
        except PipelineError as exc:
            # The evaluator knows which of its keys is wrong; only the pipeline knows where it is.
            raise type(exc)(exc.detail, file=str(loaded.path),
                            key=f"{where}.{exc.key}" if exc.key else where) from exc
        evaluators.append(evaluator)
    return evaluators
