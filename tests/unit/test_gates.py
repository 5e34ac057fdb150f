"""Quality gates: the decision and the one-line reason a reviewer reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.evaluate.gates import apply_gate
from core.evaluate.registry import build_evaluators
from tests.support.gating import evaluate_all
from core.records import Score
from core.spec import EvaluateSpec, load_spec
from tests.unit.test_evaluators import write_pipeline


def s(name: str, value: float, threshold: float = 1.0, weight: float = 1.0,
      explanation: str = "", error: str | None = None) -> Score:
    return Score(evaluator=name, type="expression", value=value,
                 passed=value >= threshold and error is None,
                 threshold=threshold, weight=weight, explanation=explanation, error=error)


def gate(name: str, threshold: float | None = None) -> EvaluateSpec:
    return EvaluateSpec(quality_gate=name, gate_threshold=threshold)


SENTIMENT = [
    {"name": "label_ok", "type": "one_of", "field": "output.sentiment",
     "values": ["positive", "negative", "neutral"]},
    {"name": "short", "type": "length", "field": "output.sentiment", "max": 10},
    {"name": "confident", "type": "range", "field": "output.confidence", "min": 0.5},
]


async def verdict_for(folder: Path, output: dict[str, Any], **evaluate: Any):
    loaded = load_spec(write_pipeline(folder, SENTIMENT, **evaluate))
    scores = await evaluate_all(build_evaluators(loaded), {}, output)
    return apply_gate(scores, loaded.spec.evaluate)


# ---------------------------------------------------------------- from a real pipeline


async def test_all_pass_from_a_pipeline(tmp_path):
    good = await verdict_for(tmp_path / "a", {"sentiment": "positive", "confidence": 0.9})
    assert (good.passed, good.gate, good.value, good.threshold) == (True, "all_pass", 1.0, None)
    assert good.reason == "all_pass: 3 of 3 passed"
    bad = await verdict_for(tmp_path / "b", {"sentiment": "happy", "confidence": 0.9})
    assert not bad.passed and bad.value == pytest.approx(2 / 3)
    assert bad.reason == ("all_pass failed: label_ok 0.00 < 1.00 "
                          "('happy' is not one of positive, negative, neutral)")


async def test_majority_pass_from_a_pipeline(tmp_path):
    verdict = await verdict_for(tmp_path, {"sentiment": "happy", "confidence": 0.9},
                                quality_gate="majority_pass")
    assert verdict.passed and verdict.value == pytest.approx(2 / 3)
    # Passing a lenient gate still tells the reviewer what was wrong.
    assert verdict.reason.startswith("majority_pass: 2 of 3 passed; failed label_ok 0.00 < 1.00")


async def test_weighted_from_a_pipeline(tmp_path):
    verdict = await verdict_for(tmp_path, {"sentiment": "happy"}, quality_gate="weighted",
                                gate_threshold=0.7)
    assert not verdict.passed and verdict.value == pytest.approx(1 / 3)
    assert verdict.threshold == 0.7
    assert verdict.reason == ("weighted 0.33 < 0.70: label_ok 0.00 (w1: 'happy' is not one of "
                              "positive, negative, neutral), confident 0.00 (w1: output.confidence "
                              "is missing), short 1.00 (w1)")


# ---------------------------------------------------------------- all_pass


def test_all_pass_lists_every_failure_with_explanations():
    scores = [s("label_ok", 0.0, explanation="'happy' is not one of positive, negative, neutral"),
              s("fine", 1.0),
              s("covers", 2 / 3, explanation="2 of 3 present; missing 'refund'")]
    verdict = apply_gate(scores, gate("all_pass"))
    assert not verdict.passed and verdict.value == pytest.approx(1 / 3)
    assert verdict.reason == (
        "all_pass failed: label_ok 0.00 < 1.00 ('happy' is not one of positive, negative, neutral); "
        "covers 0.67 < 1.00 (2 of 3 present; missing 'refund')")


def test_all_pass_honours_each_threshold():
    verdict = apply_gate([s("a", 0.7, threshold=0.6), s("b", 0.5, threshold=0.5)], gate("all_pass"))
    assert verdict.passed and verdict.reason == "all_pass: 2 of 2 passed"


def test_close_values_are_shown_so_they_differ():
    verdict = apply_gate([s("covers", 2 / 3, threshold=0.67)], gate("all_pass"))
    assert "covers 0.6667 < 0.6700" in verdict.reason


def test_reason_is_one_line_with_long_explanations():
    long = "line one\nline two " + "x" * 500
    verdict = apply_gate([s("a", 0.0, explanation=long), s("b", 0.0, explanation=long)],
                         gate("all_pass"))
    assert "\n" not in verdict.reason
    assert len(verdict.reason) < 300
    assert "(line one line two xxx" in verdict.reason


def test_a_score_with_an_error_is_named_as_such():
    verdict = apply_gate([s("judge", 0.0, threshold=0.0, error="provider timed out")],
                         gate("all_pass"))
    assert verdict.reason == "all_pass failed: judge could not score (provider timed out)"
    # Even a score marked passed does not count when it carries an error.
    marked = Score(evaluator="judge", type="x", value=1.0, passed=True, threshold=0.5, error="boom")
    assert not apply_gate([marked], gate("any_pass")).passed
    weighted = apply_gate([marked, s("b", 1.0)], gate("weighted", 0.5))
    assert not weighted.passed and weighted.value == 1.0
    assert weighted.reason == ("weighted failed: judge could not score (boom); "
                               "weighted 1.00 >= 0.50: judge 1.00 (w1), b 1.00 (w1)")


# ---------------------------------------------------------------- majority_pass / any_pass


def test_majority_needs_more_than_half():
    half = [s("a", 1.0), s("b", 1.0), s("c", 0.0), s("d", 0.0)]
    verdict = apply_gate(half, gate("majority_pass"))
    assert not verdict.passed and verdict.value == 0.5
    assert verdict.reason.startswith("majority_pass failed (2 of 4 passed): c 0.00 < 1.00")
    assert apply_gate(half + [s("e", 1.0)], gate("majority_pass")).passed
    assert not apply_gate([s("a", 1.0), s("b", 0.0)], gate("majority_pass")).passed
    assert apply_gate([s("a", 1.0)], gate("majority_pass")).passed


def test_any_pass():
    verdict = apply_gate([s("a", 0.0), s("b", 0.9, threshold=0.8)], gate("any_pass"))
    assert verdict.passed and verdict.value == 0.5
    assert verdict.reason == "any_pass: 1 of 2 passed; failed a 0.00 < 1.00"
    none = apply_gate([s("a", 0.0, explanation="x"), s("b", 0.1, threshold=0.8)], gate("any_pass"))
    assert not none.passed and none.value == 0.0
    assert none.reason == "any_pass failed (0 of 2 passed): a 0.00 < 1.00 (x); b 0.10 < 0.80"


# ---------------------------------------------------------------- weighted


def test_weighted_with_unequal_weights():
    scores = [s("label_ok", 1.0, weight=1), s("judged", 0.4, threshold=0.75, weight=3)]
    verdict = apply_gate(scores, gate("weighted", 0.8))
    assert verdict.value == pytest.approx((1.0 * 1 + 0.4 * 3) / 4)
    assert not verdict.passed and verdict.threshold == 0.8
    assert verdict.reason == "weighted 0.55 < 0.80: judged 0.40 (w3), label_ok 1.00 (w1)"
    # The same scores pass when the reliable evaluator carries the weight.
    flipped = [s("label_ok", 1.0, weight=3), s("judged", 0.4, threshold=0.75, weight=1)]
    passed = apply_gate(flipped, gate("weighted", 0.8))
    assert passed.passed and passed.value == pytest.approx(0.85)
    assert passed.reason == "weighted 0.85 >= 0.80: judged 0.40 (w1), label_ok 1.00 (w3)"


def test_a_rejected_weighted_verdict_says_why_each_failing_evaluator_scored_low():
    scores = [s("label_ok", 1.0, weight=1, explanation="'positive' is allowed"),
              s("judged", 0.2, threshold=0.7, weight=3,
                explanation="The review never mentions a refund.\nThe rest is faithful.")]
    verdict = apply_gate(scores, gate("weighted", 0.8))
    assert verdict.reason == ("weighted 0.40 < 0.80: judged 0.20 (w3: The review never mentions "
                              "a refund. The rest is faithful.), label_ok 1.00 (w1)")
    long = [s("judged", 0.0, threshold=0.7, explanation="x" * 300)]
    assert apply_gate(long, gate("weighted", 0.8)).reason.endswith("x…)")


def test_weighted_ignores_individual_pass_fail():
    # Neither evaluator passes its own threshold, but the gate only looks at the weighted score.
    scores = [s("a", 0.9, weight=2), s("b", 0.6, weight=1)]
    assert apply_gate(scores, gate("weighted", 0.8)).passed


def test_weighted_at_the_threshold_passes_despite_float_rounding():
    scores = [s("a", 0.7), s("b", 0.9)]
    verdict = apply_gate(scores, gate("weighted", 0.8))
    assert verdict.passed


def test_weighted_fractional_weights_and_zero_weight():
    scores = [s("a", 0.0, weight=0), s("b", 0.9, weight=0.5)]
    verdict = apply_gate(scores, gate("weighted", 0.9))
    assert verdict.passed and verdict.value == pytest.approx(0.9)
    assert "b 0.90 (w0.5)" in verdict.reason and "a 0.00 (w0)" in verdict.reason


def test_weighted_all_weights_zero_counts_equally():
    scores = [s("a", 1.0, weight=0), s("b", 0.5, weight=0)]
    verdict = apply_gate(scores, gate("weighted", 0.7))
    assert verdict.value == pytest.approx(0.75) and verdict.passed


# ---------------------------------------------------------------- no evaluators


@pytest.mark.parametrize("name", ["all_pass", "majority_pass", "any_pass", "weighted"])
def test_no_evaluators_passes(name):
    verdict = apply_gate([], gate(name, 0.5 if name == "weighted" else None))
    assert (verdict.passed, verdict.value, verdict.reason, verdict.gate) == (True, 1.0, "no evaluators", name)
    assert verdict.to_dict()["reason"] == "no evaluators"
