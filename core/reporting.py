"""What people see of a headless run: a live progress line on stderr and a summary at the end.

Machines get `--json` on stdout instead (see RunSummary.to_json). The live progress bar draws
only when stderr is a terminal; otherwise (cron, Airflow, CI) the run writes one plain line on
stderr at each stage change and every LOOM_PROGRESS_INTERVAL_S seconds (default 30): records
done of the total, the rate, the cost so far, the ETA and any wait.

Text from data (record ids, model answers, model and group names, a webhook's reply) is never
parsed as Rich markup: every console Loom prints through comes from `make_console`, which has
markup off, and Loom's own styles are `Text` spans (`styled`). A record id `[/]` or an answer
holding `[/INST]` prints as written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from rich.console import Console
from rich.segment import Segment
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, ProgressColumn,
                           Task, TextColumn, TimeElapsedColumn)
from rich.table import Table
from rich.text import Text

from core.errors import UsageError
from core.terminal_text import printable, printable_layout
from core.estimate import Estimate
from core.records import saved_text
from core.events import (Event, Progress, RunFinished, RunResumed, RunStarted, RunStatus, RunSummary,
                         RunWarning)

STATUS_STYLE = {RunStatus.SUCCESS: "green", RunStatus.PARTIAL: "yellow", RunStatus.FAILED: "red",
                RunStatus.CANCELLED: "magenta", RunStatus.RUNNING: "cyan"}


class _NeutralisingConsole(Console):
    """A console that neutralises escapes in every piece of text it draws.

    The printers escape data themselves (core.terminal_text.printable: a newline in a record
    id must not start a line); this is the backstop for whatever reaches a table, a progress
    line or a summary without it. Only text segments are touched: Rich's own styles and its
    cursor movements (control segments) are written as Rich makes them.
    """

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(printable_layout(segment.text),
                                                    segment.style)
            for segment in buffer)


def make_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """The one way Loom makes a console: markup off, so no text is ever parsed as markup, and
    terminal escapes from data neutralised."""
    return _NeutralisingConsole(stderr=stderr, width=width, markup=False)


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


PROGRESS_INTERVAL_ENV = "LOOM_PROGRESS_INTERVAL_S"
DEFAULT_PROGRESS_INTERVAL_S = 30.0


def progress_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between plain progress lines (LOOM_PROGRESS_INTERVAL_S; 0: at stage changes
    only; `off`: none at all). Raises UsageError (one line) for anything else."""
    value = (os.environ if environ is None else environ).get(PROGRESS_INTERVAL_ENV, "").strip()
    if not value:
        return DEFAULT_PROGRESS_INTERVAL_S
    if value.lower() in ("off", "none", "no"):
        return None
    try:
        seconds_ = float(value)
    except ValueError:
        seconds_ = -1.0
    if not seconds_ >= 0 or seconds_ == float("inf"):
        raise UsageError(f"{PROGRESS_INTERVAL_ENV}={value!r}: expected a number of seconds "
                         f"(0: a line at each stage change only; off: no lines)")
    return seconds_


class ProgressReporter:
    """An event listener: a rich progress bar on stderr at a terminal, else plain lines."""

    def __init__(self, console: Console | None = None, *, show_progress: bool | None = None,
                 interval_s: float | None | Literal["env"] = "env",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or make_console(stderr=True)
        self.show = self.console.is_terminal if show_progress is None else show_progress
        self._progress: RichProgress | None = None
        self._task: Any = None
        # For machines (stderr is not a terminal): plain lines (see plain_progress_line).
        # None: no plain lines at all (LOOM_PROGRESS_INTERVAL_S=off).
        self.interval_s = progress_interval() if interval_s == "env" else interval_s
        self._clock = clock
        self._pipeline = ""
        self._stage: str | None = None
        self._last_line = 0.0
        self._latest: Progress | None = None

    def _plain(self, text: str) -> None:
        """One line for a log: no markup, no wrapping."""
        self.console.print(printable(text), markup=False, highlight=False, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunWarning):
            # One line each, whatever the width: logs are grepped line by line.
            self.console.print(styled(("warning:", "yellow"), " ", printable(event.message)),
                               highlight=False, soft_wrap=True)
        elif isinstance(event, RunResumed):
            self.console.print(printable(resumed_line(event)), highlight=False, soft_wrap=True)
        if not self.show:
            if self.interval_s is not None:
                self._machine(event)
            return
        if isinstance(event, (RunWarning, RunResumed)):
            pass
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
            if event.waiting_s:
                detail.append(f" waiting {seconds(event.waiting_s)}" + (
                    f" ({event.waiting_reason})" if event.waiting_reason else ""), style="cyan")
            self._progress.update(self._task, completed=done,
                                  total=event.total_hint or max(event.extracted, 1), detail=detail)
        elif isinstance(event, RunFinished):
            self.stop()

    def _machine(self, event: Event) -> None:
        """Plain progress lines for logs: at each stage change, and every `interval_s`."""
        if isinstance(event, RunStarted):
            self._pipeline = event.pipeline
            self._stage = "started"
            self._last_line = self._clock()
            self._plain(f"progress {event.pipeline} {event.run_id}: started · {event.source} → "
                        f"{event.destination}")
        elif isinstance(event, Progress):
            self._latest = event
            stage = progress_stage(event)
            now = self._clock()
            interval = self.interval_s or 0.0
            due = interval > 0 and now - self._last_line >= interval
            if stage != self._stage or due:
                self._stage = stage
                self._last_line = now
                self._plain(plain_progress_line(self._pipeline, event, stage))
        elif isinstance(event, RunFinished):
            summary = event.summary
            self._plain(f"progress {summary.pipeline} {summary.run_id}: finished {summary.status}"
                        f" · {summary.loaded} loaded, {summary.quarantined} quarantined, "
                        f"{summary.skipped} skipped of {summary.extracted} · "
                        f"{money(summary.cost_usd)} · {summary.duration_s:.1f} s")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def progress_stage(event: Progress) -> str:
    """Where a run is, for the plain progress line: a line is written whenever this changes."""
    if event.waiting_s:
        return "waiting"
    if not event.extracted:
        return "reading"
    return "processing"


def plain_progress_line(pipeline: str, event: Progress, stage: str) -> str:
    """`progress NAME RUN: processing · 120/1000 records (…) · 12.0 rec/s · $0.0123 so far ·
    ETA 1m13s · wait -` — one line, the same fields every time, for a log to grep."""
    done = event.loaded + event.quarantined + event.skipped
    total = event.total_hint
    of = f"{done}/{total}" if total is not None else f"{done}/{event.extracted}+"
    rate = event.records_per_s
    if total is not None and rate > 0 and done < total:
        eta = _eta(max(0, total - done) / rate)
    elif total is not None and done >= total:
        eta = "0s"
    else:
        eta = "unknown"
    if event.waiting_s:
        wait = f"{event.waiting_s:.0f}s" + (f" ({event.waiting_reason})"
                                             if event.waiting_reason else "")
    else:
        wait = "-"
    budget = f" of ${event.budget_usd:g}" if event.budget_usd is not None else ""
    return (f"progress {pipeline} {event.run_id}: {stage} · {of} records ({event.loaded} "
            f"loaded, {event.quarantined} quarantined, {event.skipped} skipped, "
            f"{event.in_flight} in flight) · {rate:.1f} rec/s · {money(event.cost_usd)}{budget} "
            f"so far · ETA {eta} · wait {wait}")


def _eta(value: float) -> str:
    value = int(round(value))
    hours, rest = divmod(value, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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
    table.add_row(Text(printable(summary.pipeline), style="bold"), Text.assemble(
        "run ", printable(summary.run_id), " · ", (summary.status, f"bold {style}"),
        f" · {summary.duration_s:.1f} s", f" · {attempts} attempts" if attempts else ""))
    if summary.status_reason:
        table.add_row("reason", Text(printable(summary.status_reason), style=style))
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
    repeated = (f" ({summary.calls_repeated} repeated after a crash)"
                if summary.calls_repeated else "")
    table.add_row("tokens", f"{summary.tokens.describe()} · "
                            f"{summary.llm_calls} calls{repeated}, {summary.cache_hits} cached")
    if summary.savings_usd:
        table.add_row("saved", savings_text(summary.savings_usd))
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
        table.add_row("warning", Text(printable(warning), style="yellow"))
    for alert in summary.extra.get("alerts", ()):
        table.add_row("alert", Text(printable(f"{alert['type']}: {alert['message']}"),
                                    style="red" if alert["severity"] == "error" else "yellow"))
    if summary.extra.get("held"):
        table.add_row("next", f"loom release {summary.run_id}   (publish the held records)")
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


SAVING_NAMES = {"prompt_cache": "prompt caching", "response_cache": "the response cache",
                "batch": "batch processing", "cascade": "the cascade"}


def savings_text(savings: dict[str, float]) -> str:
    """`$0.012345 saved by prompt caching` (a lever that cost more says `more`)."""
    return " · ".join(f"{saved_text(amount)} by {SAVING_NAMES.get(lever, lever)}"
                      for lever, amount in savings.items())
