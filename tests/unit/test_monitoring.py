"""The monitoring checks on their own: which alerts a run raises against its history."""

from __future__ import annotations

from typing import Any

import pytest

from core.events import RunSummary
from core.monitoring import Baseline, check_run, slack_text
from core.records import EvaluatorStats
from core.spec import PipelineSpec, load_spec
from tests.pipelines import write_pipeline


def summary(**overrides: Any) -> RunSummary:
    values: dict[str, Any] = dict(
        run_id="run-now", pipeline="p", status="success", status_reason=None, extracted=100,
        loaded=90, quarantined=10, skipped=0, cost_usd=0.10, cost_by_stage={}, cost_by_model={},
        input_tokens=0, output_tokens=0, llm_calls=100, cache_hits=0, duration_s=1.0,
        latency_p50_s=0.5, latency_p95_s=1.0, latency_p99_s=1.2)
    values.update(overrides)
    return RunSummary(**values)


def stats(name: str, mean: float | None) -> EvaluatorStats:
    return EvaluatorStats(evaluator=name, type="custom_criteria", threshold=0.7, weight=1.0,
                          count=100, mean=mean)


def baseline(index: int, *, cost: float | None = 0.10, processed: int = 100,
             **means: float) -> Baseline:
    return Baseline(run_id=f"run-{index}", cost_usd=cost, processed=processed,
                    evaluator_means=dict(means))


def spec_with(tmp_path, monitoring: dict[str, Any] | None = None, **evaluate: Any) -> PipelineSpec:
    sections: dict[str, Any] = {}
    if monitoring is not None:
        sections["monitoring"] = monitoring
    if evaluate:
        sections["evaluate"] = evaluate
    path = write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t", "reply": "r"}], **sections)
    return load_spec(path).spec


def test_nothing_configured_raises_nothing(tmp_path):
    spec = spec_with(tmp_path)
    history = [baseline(i, cost=0.001, judged=0.99) for i in range(5)]
    assert check_run(summary(), [stats("judged", 0.1)], spec, history) == []


def test_a_mean_below_min_mean_score(tmp_path):
    spec = spec_with(tmp_path, {"min_mean_score": 0.7})
    (alert,) = check_run(summary(), [stats("judged", 0.62), stats("label_ok", 0.95),
                                     stats("never_ran", None)], spec, [])
    assert alert.alert_type == "score_degradation" and alert.severity == "warning"
    assert alert.message == "judged: mean score 0.620 is below min_mean_score 0.700"
    assert (alert.threshold_value, alert.actual_value) == (0.7, 0.62)
    assert alert.details == {"evaluator": "judged", "check": "min_mean_score"}


def test_a_drop_from_the_trailing_mean(tmp_path):
    spec = spec_with(tmp_path, {"score_drop": 0.1, "min_history": 3})
    history = [baseline(1, judged=0.9), baseline(2, judged=0.8), baseline(3, judged=0.85)]
    (alert,) = check_run(summary(), [stats("judged", 0.7)], spec, history)
    assert alert.alert_type == "score_degradation"
    assert alert.message == ("judged: mean score 0.700 is 17.6% below its trailing mean 0.850 "
                             "over the last 3 runs (score_drop 10%)")
    assert alert.threshold_value == pytest.approx(0.765)
    assert alert.details["trailing_mean"] == pytest.approx(0.85) and alert.details["runs"] == 3

    assert check_run(summary(), [stats("judged", 0.78)], spec, history) == []  # within 10%
    # Too little history: no comparison yet.
    assert check_run(summary(), [stats("judged", 0.1)], spec, history[:2]) == []
    # History of another evaluator does not count.
    assert check_run(summary(), [stats("new_judge", 0.1)], spec, history) == []


def test_a_cost_spike_per_record_says_so(tmp_path):
    spec = spec_with(tmp_path, {"cost_spike_factor": 2.0, "min_history": 2})
    history = [baseline(1, cost=0.10, processed=100), baseline(2, cost=0.05, processed=50)]
    # Per record: 0.001 before; this run 0.0025 (0.25 over 100 records).
    (alert,) = check_run(summary(cost_usd=0.25), [], spec, history)
    assert alert.alert_type == "cost_spike"
    assert alert.message == ("cost per record $0.0025 is 2.5× its trailing mean $0.0010 over "
                             "the last 2 runs (cost_spike_factor 2)")
    assert alert.details["basis"] == "per_record"
    # A bigger run that costs the same per record is no spike.
    assert check_run(summary(cost_usd=1.0, extracted=1000, loaded=1000, quarantined=0), [], spec,
                     history) == []


def test_a_cost_spike_per_run(tmp_path):
    spec = spec_with(tmp_path, {"cost_spike_factor": 3, "cost_basis": "per_run", "min_history": 1})
    (alert,) = check_run(summary(cost_usd=0.31), [], spec, [baseline(1, cost=0.10)])
    assert alert.message.startswith("run cost $0.31 is 3.1× its trailing mean $0.10")
    assert check_run(summary(cost_usd=0.29), [], spec, [baseline(1, cost=0.10)]) == []


def test_no_cost_comparison_with_free_or_unpriced_history(tmp_path):
    spec = spec_with(tmp_path, {"cost_spike_factor": 2, "min_history": 1})
    assert check_run(summary(cost_usd=5.0), [], spec, [baseline(1, cost=0.0)]) == []
    assert check_run(summary(cost_usd=5.0), [], spec, [baseline(1, cost=None)]) == []
    assert check_run(summary(cost_usd=None), [], spec, [baseline(1, cost=0.1)]) == []


def test_latency_sla(tmp_path):
    spec = spec_with(tmp_path, {"latency_p95_s": 2.0})
    (alert,) = check_run(summary(latency_p95_s=2.5), [], spec, [])
    assert (alert.alert_type, alert.message) == ("latency_sla",
                                                 "p95 latency 2.50 s is above latency_p95_s 2.00 s")
    assert check_run(summary(latency_p95_s=2.0), [], spec, []) == []
    assert check_run(summary(latency_p95_s=None), [], spec, []) == []


def test_rejection_rate_above_the_maximum_is_an_error(tmp_path):
    spec = spec_with(tmp_path, max_rejection_rate=0.05)
    (alert,) = check_run(summary(status="partial"), [], spec, [])
    assert alert.alert_type == "rejection_rate" and alert.severity == "error"
    assert alert.message == "rejection rate 10.0% is above max_rejection_rate 5.0% (10 of 100 records)"


def test_failed_and_cancelled_runs_are_not_monitored(tmp_path):
    spec = spec_with(tmp_path, {"latency_p95_s": 0.1})
    for status in ("failed", "cancelled"):
        assert check_run(summary(status=status), [], spec, []) == []


def test_the_slack_text_names_the_run_and_every_alert(tmp_path):
    spec = spec_with(tmp_path, {"latency_p95_s": 0.5, "min_mean_score": 0.9})
    alerts = check_run(summary(), [stats("judged", 0.5)], spec, [])
    text = slack_text("p", summary(), alerts)
    assert text.splitlines() == [
        "Loom: p run run-now (success) raised 2 alerts",
        "• [warning] score_degradation: judged: mean score 0.500 is below min_mean_score 0.900",
        "• [warning] latency_sla: p95 latency 1.00 s is above latency_p95_s 0.50 s"]


def test_monitoring_keys_are_checked(tmp_path):
    from core.errors import PipelineError

    with pytest.raises(PipelineError, match="monitoring.notify.slack_hook: unknown key "
                                            r"\(did you mean 'slack_webhook'\?\)"):
        spec_with(tmp_path, {"notify": {"slack_hook": "x"}})
    with pytest.raises(PipelineError, match="monitoring.score_drop"):
        spec_with(tmp_path, {"score_drop": 1.5})
