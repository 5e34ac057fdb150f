"""After a run: compare it with the pipeline's recent runs and raise alerts.

Checks, each on when the pipeline's `monitoring:` (or `evaluate.max_rejection_rate`) asks:
- `score_degradation`: an evaluator's mean below `min_mean_score`, or more than `score_drop`
  (a share) below its mean over the trailing window;
- `cost_spike`: cost above `cost_spike_factor` × the trailing mean, per record (default) or per
  run (`cost_basis`), and the alert says which;
- `latency_sla`: the run's p95 latency above `latency_p95_s`;
- `rejection_rate`: more records rejected than `evaluate.max_rejection_rate` allows.

The trailing window is the pipeline's last `window` successful or partial runs before this one;
comparisons with it wait until it holds `min_history` runs. Alerts are kept in the store
(monitoring_alerts), returned in the run's summary, and posted to Slack when
`monitoring.notify.slack_webhook` is set. Posting is best effort: a failure is a warning, never
a failed run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from core.credentials import SecretResolver
from core.errors import LoomError
from core.events import RunStatus, RunSummary
from core.records import EvaluatorStats
from core.spec import MonitoringSpec, PipelineSpec

MONITORED_STATUSES = (RunStatus.SUCCESS, RunStatus.PARTIAL)
SLACK = "slack"


@dataclass(slots=True)
class Alert:
    alert_type: str  # score_degradation | cost_spike | latency_sla | rejection_rate
    severity: str  # warning | error
    message: str
    threshold_value: float | None = None
    actual_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    notified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.alert_type, "severity": self.severity,
                "message": self.message, "threshold": self.threshold_value,
                "actual": self.actual_value, "details": self.details, "notified": self.notified}


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the check needs of one earlier run."""

    run_id: str
    cost_usd: float | None
    processed: int  # loaded + quarantined: the records the run paid for
    evaluator_means: dict[str, float]


# ---------------------------------------------------------------- the checks (pure)


def check_run(summary: RunSummary, stats: list[EvaluatorStats], spec: PipelineSpec,
              history: list[Baseline]) -> list[Alert]:
    """The alerts this run raises against `history` (newest first). No I/O."""
    if summary.status not in MONITORED_STATUSES:
        return []
    monitoring = spec.monitoring
    alerts: list[Alert] = []
    alerts += _rejection(summary, spec.evaluate.max_rejection_rate)
    alerts += _scores(stats, monitoring, history)
    alerts += _cost(summary, monitoring, history)
    alerts += _latency(summary, monitoring)
    return alerts


def _rejection(summary: RunSummary, limit: float | None) -> list[Alert]:
    rate = summary.rejection_rate
    if limit is None or rate <= limit:
        return []
    return [Alert("rejection_rate", "error",
                  f"rejection rate {rate:.1%} is above max_rejection_rate {limit:.1%} "
                  f"({summary.quarantined} of {summary.loaded + summary.quarantined + int(summary.extra.get('held') or 0)} records)",
                  threshold_value=limit, actual_value=rate)]


def _scores(stats: list[EvaluatorStats], monitoring: MonitoringSpec,
            history: list[Baseline]) -> list[Alert]:
    alerts: list[Alert] = []
    for evaluator in stats:
        mean = evaluator.mean
        if mean is None:
            continue
        name = evaluator.evaluator
        floor = monitoring.min_mean_score
        if floor is not None and mean < floor:
            alerts.append(Alert(
                "score_degradation", "warning",
                f"{name}: mean score {mean:.3f} is below min_mean_score {floor:.3f}",
                threshold_value=floor, actual_value=mean,
                details={"evaluator": name, "check": "min_mean_score"}))
            continue  # one alert per evaluator: the floor says the most
        drop = monitoring.score_drop
        earlier = [b.evaluator_means[name] for b in history if name in b.evaluator_means]
        if drop is None or len(earlier) < monitoring.min_history:
            continue
        trailing = sum(earlier) / len(earlier)
        limit = trailing * (1.0 - drop)
        if trailing > 0 and mean < limit - 1e-12:
            fell = 1.0 - mean / trailing
            alerts.append(Alert(
                "score_degradation", "warning",
                f"{name}: mean score {mean:.3f} is {fell:.1%} below its trailing mean "
                f"{trailing:.3f} over {_last(len(earlier))} (score_drop {drop:.0%})",
                threshold_value=limit, actual_value=mean,
                details={"evaluator": name, "check": "score_drop", "trailing_mean": trailing,
                         "runs": len(earlier)}))
    return alerts


def _cost(summary: RunSummary, monitoring: MonitoringSpec, history: list[Baseline]) -> list[Alert]:
    factor = monitoring.cost_spike_factor
    if factor is None or summary.cost_usd is None:
        return []
    per_record = monitoring.cost_basis == "per_record"
    processed = summary.loaded + summary.quarantined + int(summary.extra.get("held") or 0)

    def basis(cost: float | None, records: int) -> float | None:
        if cost is None:
            return None
        if per_record:
            return cost / records if records else None
        return cost

    current = basis(summary.cost_usd, processed)
    earlier = [v for v in (basis(b.cost_usd, b.processed) for b in history) if v is not None]
    if current is None or len(earlier) < monitoring.min_history:
        return []
    trailing = sum(earlier) / len(earlier)
    if trailing <= 0:
        return []  # the earlier runs were free (cached answers): nothing to compare with
    limit = trailing * factor
    if current <= limit:
        return []
    what = "cost per record" if per_record else "run cost"
    return [Alert("cost_spike", "warning",
                  f"{what} {_money(current)} is {current / trailing:.1f}× its trailing mean "
                  f"{_money(trailing)} over {_last(len(earlier))} "
                  f"(cost_spike_factor {factor:g})",
                  threshold_value=limit, actual_value=current,
                  details={"basis": monitoring.cost_basis, "trailing_mean": trailing,
                           "runs": len(earlier), "factor": factor})]


def _latency(summary: RunSummary, monitoring: MonitoringSpec) -> list[Alert]:
    sla = monitoring.latency_p95_s
    p95 = summary.latency_p95_s
    if sla is None or p95 is None or p95 <= sla:
        return []
    return [Alert("latency_sla", "warning",
                  f"p95 latency {p95:.2f} s is above latency_p95_s {sla:.2f} s",
                  threshold_value=sla, actual_value=p95)]


def _money(value: float) -> str:
    if value == 0:
        return "$0"
    digits = max(2, 1 - int(math.floor(math.log10(abs(value)))))  # two significant digits
    return f"${value:.{min(digits, 10)}f}"


def _last(runs: int) -> str:
    return "the last run" if runs == 1 else f"the last {runs} runs"


# ---------------------------------------------------------------- with the store


async def trailing_baselines(store: Any, pipeline: str, *, before: datetime, run_id: str,
                             window: int) -> list[Baseline]:
    runs = await store.trailing_runs(pipeline, before=before, exclude_run_id=run_id,
                                     statuses=MONITORED_STATUSES, limit=window)
    means: dict[str, dict[str, float]] = {run.run_id: {} for run in runs}
    for row in await store.evaluation_results_for([run.run_id for run in runs]):
        if row.mean is not None:
            means[row.run_id][row.evaluator] = row.mean
    return [Baseline(run_id=run.run_id, cost_usd=run.cost_usd,
                     processed=(run.loaded or 0) + (run.quarantined or 0),
                     evaluator_means=means[run.run_id]) for run in runs]


async def monitor_run(store: Any, spec: PipelineSpec, summary: RunSummary,
                      stats: list[EvaluatorStats], *, started_at: datetime,
                      resolver: SecretResolver, on_warning: Callable[[str], None]) -> list[Alert]:
    """Check a finished run, keep its alerts, post them when asked; returns them."""
    if summary.status not in MONITORED_STATUSES:
        return []
    monitoring = spec.monitoring
    history: list[Baseline] = []
    if monitoring.score_drop is not None or monitoring.cost_spike_factor is not None:
        history = await trailing_baselines(store, spec.name, before=started_at,
                                           run_id=summary.run_id, window=monitoring.window)
    alerts = check_run(summary, stats, spec, history)
    if not alerts:
        return alerts
    notify = spec.monitoring.notify
    channel = SLACK if notify is not None and notify.slack_webhook else None
    for alert in alerts:
        alert.id = await store.add_alert(
            pipeline=spec.name, run_id=summary.run_id, alert_type=alert.alert_type,
            severity=alert.severity, message=alert.message, details=alert.details,
            threshold_value=alert.threshold_value, actual_value=alert.actual_value,
            notification_channel=channel)
    if channel is not None:
        assert notify is not None and notify.slack_webhook is not None
        posted = await post_to_slack(notify.slack_webhook, slack_text(spec.name, summary, alerts),
                                     timeout_s=notify.timeout_s, resolver=resolver,
                                     on_warning=on_warning)
        if posted:
            await store.mark_alerts_notified([a.id for a in alerts if a.id is not None])
            for alert in alerts:
                alert.notified = True
    return alerts


def slack_text(pipeline: str, summary: RunSummary, alerts: list[Alert]) -> str:
    count = f"{len(alerts)} alert{'s' if len(alerts) != 1 else ''}"
    lines = [f"Loom: {pipeline} run {summary.run_id} ({summary.status}) raised {count}"]
    lines += [f"• [{a.severity}] {a.alert_type}: {a.message}" for a in alerts]
    return "\n".join(lines)


async def post_to_slack(webhook: str, text: str, *, timeout_s: float, resolver: SecretResolver,
                        on_warning: Callable[[str], None]) -> bool:
    """Post to a Slack incoming webhook. Any failure is a warning; returns whether it worked."""
    try:
        url = resolver.resolve(webhook, where="monitoring.notify.slack_webhook")
    except LoomError as exc:
        on_warning(f"alerts not posted to Slack: {exc}")
        return False
    if not url.startswith(("https://", "http://")):
        on_warning("alerts not posted to Slack: monitoring.notify.slack_webhook is not an "
                   "http(s) URL")
        return False
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(url, json={"text": text})
    except httpx.HTTPError as exc:
        on_warning(resolver.redact(f"alerts not posted to Slack: {type(exc).__name__}: {exc}"))
        return False
    if response.status_code >= 300:
        body = " ".join(response.text.split())[:200]
        on_warning(f"alerts not posted to Slack: the webhook answered {response.status_code}"
                   + (f" ({body})" if body else ""))
        return False
    return True
