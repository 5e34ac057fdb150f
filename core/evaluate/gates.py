"""The quality gate: one record's scores in, load-or-quarantine out.

The verdict's reason is what a reviewer reads in the quarantine, so it names the evaluators
that failed, with value against threshold and their explanation, on one line.
"""

from __future__ import annotations

from core.records import Score, Verdict
from core.spec import EvaluateSpec

# Weighted sums such as 0.7*1 + 0.9*1 land a hair under the 0.8 a person computes; a record
# must not be quarantined for a rounding error.
_TOLERANCE = 1e-9

# Each failing evaluator's explanation is cut so that several still fit on one line.
_EXPLANATION_IN_REASON = 100


def apply_gate(scores: list[Score], spec: EvaluateSpec) -> Verdict:
    gate = spec.quality_gate
    if not scores:
        return Verdict(passed=True, gate=gate, value=1.0, threshold=None, reason="no evaluators")
    if gate == "weighted":
        return _weighted(scores, spec.gate_threshold if spec.gate_threshold is not None else 1.0)

    failing = [s for s in scores if not _passed(s)]
    total = len(scores)
    passed_count = total - len(failing)
    if gate == "all_pass":
        passed = not failing
    elif gate == "majority_pass":
        passed = passed_count * 2 > total  # more than half: 2 of 4 is not a majority
    elif gate == "any_pass":
        passed = passed_count > 0
    else:
        raise ValueError(f"unknown quality gate {gate!r}")

    listed = "; ".join(_failure(s) for s in failing)
    if passed:
        reason = f"{gate}: {passed_count} of {total} passed"
        if failing:  # a record that passes a lenient gate still says what it got wrong
            reason += f"; failed {listed}"
    else:
        counted = "" if gate == "all_pass" else f" ({passed_count} of {total} passed)"
        reason = f"{gate} failed{counted}: {listed}"
    return Verdict(passed=passed, gate=gate, value=passed_count / total, threshold=None, reason=reason)


def _weighted(scores: list[Score], threshold: float) -> Verdict:
    total_weight = sum(s.weight for s in scores)
    # Every weight 0 says nothing about relative importance: count the evaluators equally
    # rather than divide by zero.
    weights = [s.weight for s in scores] if total_weight > 0 else [1.0] * len(scores)
    total_weight = sum(weights)
    value = sum(s.value * w for s, w in zip(scores, weights)) / total_weight
    # A score that could not be computed leaves the weighted value unknown, whatever it adds up to.
    errored = [s for s in scores if s.error]
    passed = value >= threshold - _TOLERANCE and not errored
    # The evaluators that cost the most score come first: they are why the record failed.
    ranked = sorted(zip(scores, weights), key=lambda sw: -(1.0 - sw[0].value) * sw[1])
    below = value < threshold - _TOLERANCE
    # A rejected record says why each evaluator that failed on its own scored low (a judge's
    # explanation above all): that is what the reviewer needs in the quarantine's one line.
    parts = ", ".join(f"{s.evaluator} {s.value:.2f} (w{_weight(w)}"
                      f"{_why(s) if below and not _passed(s) else ''})" for s, w in ranked)
    sign = "<" if below else ">="
    shown_value, shown_threshold = _pair(value, threshold) if below else \
        (f"{value:.2f}", f"{threshold:.2f}")
    reason = f"weighted {shown_value} {sign} {shown_threshold}: {parts}"
    if errored:
        reason = "weighted failed: " + "; ".join(_failure(s) for s in errored) + f"; {reason}"
    return Verdict(passed=passed, gate="weighted", value=value, threshold=threshold, reason=reason)


def _why(score: Score) -> str:
    why = " ".join(score.explanation.split())
    if not why:
        return ""
    if len(why) > _EXPLANATION_IN_REASON:
        why = why[: _EXPLANATION_IN_REASON - 1] + "…"
    return f": {why}"


def _passed(score: Score) -> bool:
    return score.passed and not score.error


def _failure(score: Score) -> str:
    why = score.error or score.explanation
    if score.error:
        text = f"{score.evaluator} could not score"
    else:
        value, threshold = _pair(score.value, score.threshold)
        text = f"{score.evaluator} {value} < {threshold}"
    if why:
        why = " ".join(why.split())
        if len(why) > _EXPLANATION_IN_REASON:
            why = why[: _EXPLANATION_IN_REASON - 1] + "…"
        text += f" ({why})"
    return text


def _pair(value: float, threshold: float) -> tuple[str, str]:
    """Two decimals, unless that would print a failing 0.667 against 0.67 as 0.67 < 0.67."""
    shown = f"{value:.2f}", f"{threshold:.2f}"
    if shown[0] == shown[1] and value != threshold:
        shown = f"{value:.4f}", f"{threshold:.4f}"
    return shown


def _weight(weight: float) -> str:
    return str(int(weight)) if float(weight).is_integer() else f"{weight:g}"
