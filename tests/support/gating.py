"""Scoring one output with a pipeline's evaluators, for the evaluator and gate tests.

Production scores inside the record processor (core.processing), which also decides what a
failing evaluator means for the record; these tests need only the scores, in order."""

from typing import Any

from core.errors import EvaluatorError
from core.evaluate.base import Evaluator
from core.records import Score


async def evaluate_all(evaluators: list[Evaluator], input_data: dict[str, Any],
                       output: Any) -> list[Score]:
    """Every evaluator's score for one record, in order. An EvaluatorError propagates with the
    evaluator's name in front; what to do with the record is the engine's decision."""
    scores: list[Score] = []
    for evaluator in evaluators:
        try:
            scores.append(await evaluator.score(input_data, output))
        except EvaluatorError as exc:
            raise EvaluatorError(f"{evaluator.name}: {exc.message}") from exc
    return scores
