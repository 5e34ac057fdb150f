"""Reviewer agreement: did the person who resolved a quarantined record agree with its judges?

Approving a record as it is says its output was good; editing it before approving, or
discarding it, says it was not. A judge agreed with the person when its own verdict (passed or
failed, by its threshold) says the same. So discarding a record a judge failed is agreement,
approving it is not; a judge that passed a record the gate still rejected agrees with an
approval. Reprocessing asks the model again and says nothing about the output, and a judge that
could not score a record has no verdict: neither is counted.

Over many decisions this is each judge's agreement rate with people: how far its scores can be
trusted to quarantine on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.spec import JUDGE_TYPES

# The action -> whether it says the record's output was good as it was.
HUMAN_VERDICTS = {"approve": True, "edit": False, "discard": False}


@dataclass(frozen=True, slots=True)
class JudgeDecision:
    """One judge's verdict on one record, against a person's."""

    evaluator: str
    evaluator_type: str
    judge_value: float
    judge_passed: bool
    action: str
    agreed: bool


def judge_decisions(scores: list[dict[str, Any]] | None, action: str) -> list[JudgeDecision]:
    """The judges' verdicts among a quarantined record's stored scores, against `action`."""
    if action not in HUMAN_VERDICTS:
        return []
    output_good = HUMAN_VERDICTS[action]
    decisions = []
    for score in scores or ():
        if not isinstance(score, dict) or score.get("type") not in JUDGE_TYPES or score.get("error"):
            continue
        passed = bool(score.get("passed"))
        decisions.append(JudgeDecision(
            evaluator=str(score.get("evaluator")), evaluator_type=str(score["type"]),
            judge_value=float(score.get("value") or 0.0), judge_passed=passed, action=action,
            agreed=passed == output_good))
    return decisions


@dataclass(frozen=True, slots=True)
class JudgeAgreement:
    """One judge's agreement with people over a pipeline's resolved quarantine."""

    pipeline: str
    evaluator: str
    evaluator_type: str
    decisions: int  # records a person approved, edited or discarded after this judge scored them
    agreed: int
    too_strict: int  # the judge failed a record the person approved as it was
    too_lenient: int  # the judge passed a record the person edited or discarded

    @property
    def rate(self) -> float | None:
        return self.agreed / self.decisions if self.decisions else None

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "evaluator": self.evaluator,
                "type": self.evaluator_type, "decisions": self.decisions, "agreed": self.agreed,
                "rate": self.rate, "too_strict": self.too_strict, "too_lenient": self.too_lenient}
