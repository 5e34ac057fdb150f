"""What people see of a headless run: a live progress line on stderr and a summary at the end.

Machines get `--json` on stdout instead (see RunSummary.to_json); the progress display only
draws when stderr is a terminal, so logs under cron and Airflow stay clean.

Text from data (record ids, model answers, model and group names, a webhook's reply) is never
parsed as Rich markup: every console Loom prints through comes from `make_console`, which has
markup off, and Loom's own styles are `Text` spans (`styled`). A record id `[/]` or an answer
holding `[/INST]` prints as written.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, ProgressColumn,
                           Task, TextColumn, TimeElapsedColumn)
from rich.table import Table
from rich.text import Text

from core.estimate import Estimate
from core.events import (Event, Progress, RunFinished, RunResumed, RunStarted, RunStatus, RunSummary,
                         RunWarning)

STATUS_STYLE = {RunStatus.SUCCESS: "green", RunStatus.PARTIAL: "yellow", RunStatus.FAILED: "red",
                RunStatus.CANCELLED: "magenta", RunStatus.RUNNING: "cyan"}


def make_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """The one way Loom makes a console: markup off, so no text is ever parsed as markup."""
    return Console(stderr=stderr, width=width, markup=False)


def styled(*parts: str | tuple[str, str] | Text) -> Text:
    """Loom's own styling around data: `styled(("ok", "green"), " ", name)`; plain strings are
    text as written, never markup."""
    return Text.assemble(*parts)


class _TextField(ProgressColumn):
    """A task field that is already a `Text` (the progress detail), drawn as is."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, task: Task) -> Text:
        value = task.fields.get(self.name, "")
        return value if isinstance(value, Text) else Text(str(value))


def money(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value >= 0.01 else f"${value:.6f}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


class ProgressReporter:
    """An event listener drawing a rich progress bar on stderr."""

    def __init__(self, console: Console | None = None, *, show_progress: bool | None = None) -> None:
        self.console = console or make_console(stderr=True)
        self.show = self.console.is_terminal if show_progress is None else show_progress
        self._progress: RichProgress | None = None
        self._task: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunWarning):
            # One line each, whatever the width: logs are grepped line by line.
            self.console.print(styled(("warning:", "yellow"), " ", event.message),
                               highlight=False, soft_wrap=True)
        elif isinstance(event, RunResumed):
            self.console.print(resumed_line(event), highlight=False, soft_wrap=True)
        elif isinstance(event, RunStarted) and self.show:
            self._progress = RichProgress(
                TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                MofNCompleteColumn(), _TextField("detail"), TimeElapsedColumn(),
                console=self.console, transient=True, refresh_per_second=4)
            self._progress.start()
            self._task = self._progress.add_task(event.pipeline, total=None, detail="starting")
        elif isinstance(event, Progress) and self._progress is not None:
            done = event.loaded + event.quarantined + event.skipped
            detail = styled((f"{event.loaded} loaded", "green"), " ",
                            (f"{event.quarantined} quarantined", "yellow"),
                            f" {event.records_per_s:.0f}/s {money(event.cost_usd)}")
            self._progress.update(self._task, completed=done,
                                  total=event.total_hint or max(event.extracted, 1), detail=detail)
        elif isinstance(event, RunFinished):
            self.stop()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def resumed_line(event: RunResumed) -> str:
    """What a resumed run found its earlier attempts did, in one line."""
    line = (f"resuming run {event.run_id} (attempt {event.attempt}): {event.loaded} loaded and "
            f"{event.quarantined} quarantined before; {event.from_store} to load from their "
            f"stored answers without a call")
    if event.rewritten:
        line += f", {event.rewritten} loaded ones written again (the destination is rebuilt)"
    return line + "; every other record is processed now"


def summary_table(summary: RunSummary) -> Table:
    """The end-of-run summary people read; fits an 80-column terminal."""
    style = STATUS_STYLE.get(summary.status, "white")
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    attempts = summary.extra.get("attempts")
    table.add_row(Text(summary.pipeline, style="bold"), Text.assemble(
        "run ", summary.run_id, " · ", (summary.status, f"bold {style}"),
        f" · {summary.duration_s:.1f} s", f" · {attempts} attempts" if attempts else ""))
    if summary.status_reason:
        table.add_row("reason", Text(summary.status_reason, style=style))
    shard = summary.extra.get("shard")
    if shard:
        # Records of other shards are not this run's: the counts below are this shard's.
        table.add_row("shard", Text(f"{shard['index']}/{shard['count']} of group "
                                    f"{shard['group']} (loom runs sums the group)"))
    table.add_row("records", (
        f"{summary.extracted} extracted, {summary.loaded} loaded, {summary.quarantined} "
        f"quarantined, {summary.skipped} skipped ({summary.rejection_rate:.1%} rejected)"))
    by_stage = ", ".join(f"{stage} {money(cost)}" for stage, cost in summary.cost_by_stage.items())
    table.add_row("cost", f"{money(summary.cost_usd)}" + (f" ({by_stage})" if by_stage else ""))
    table.add_row("tokens", f"{summary.input_tokens:,} in, {summary.output_tokens:,} out · "
                            f"{summary.llm_calls} calls, {summary.cache_hits} cached")
    if summary.retries or summary.throttled:
        limits = f"{summary.retries} retries, {summary.throttled} rate-limited (429)"
        if summary.concurrency_min is not None and summary.concurrency_min != summary.concurrency:
            limits += (f" · concurrency {summary.concurrency}, lowered to "
                       f"{summary.concurrency_min}, ended at {summary.concurrency_final}")
        table.add_row("limits", limits)
    if summary.budget_usd is not None:
        table.add_row("budget", f"{money(summary.cost_usd)} of ${summary.budget_usd:g}")
    table.add_row("latency", f"p50 {seconds(summary.latency_p50_s)} · p95 "
                             f"{seconds(summary.latency_p95_s)} · p99 {seconds(summary.latency_p99_s)}")
    for warning in summary.warnings:
        table.add_row("warning", Text(warning, style="yellow"))
    for alert in summary.extra.get("alerts", ()):
        table.add_row("alert", Text(f"{alert['type']}: {alert['message']}",
                                    style="red" if alert["severity"] == "error" else "yellow"))
    if summary.quarantined:
        table.add_row("next", f"loom quarantine list --run {summary.run_id}")
    return table


def estimate_table(estimate: Estimate) -> Table:
    """What `--estimate` prints for people."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    table.add_row(Text(estimate.pipeline, style="bold"),
                  f"estimate from {estimate.sample} of {'' if estimate.total_exact else 'about '}"
                  f"{estimate.total:,} records")
    table.add_row("sample", (
        f"{estimate.loaded} would load, {estimate.quarantined} quarantined, "
        f"{estimate.skipped} skipped · {estimate.calls} calls ({estimate.cache_hits} from the "
        f"cache, counted at full price) · {money(estimate.cost_usd)}"))
    duration = estimate.projected_duration_s
    when = "unknown (every sample answer came from the cache)" if duration is None else \
        _duration(duration)
    table.add_row("projected", (
        f"{money(estimate.projected_cost_usd)} · {estimate.projected_input_tokens:,} tokens in, "
        f"{estimate.projected_output_tokens:,} out · {estimate.projected_calls:,} calls"))
    table.add_row("time", f"{when} at concurrency {estimate.concurrency}")
    return table


def _duration(value: float) -> str:
    if value < 90:
        return f"about {value:.0f} s"
    if value < 5400:
        return f"about {value / 60:.0f} min"
    return f"about {value / 3600:.1f} h"
