"""A run, live: records per stage, throughput, cost against the budget, p50/p95 latency and
the latest errors, then the summary.

The engine runs in a thread worker with its own event loop and its own store connection, so
a busy run never makes the interface stutter. Only the engine's Progress snapshots (a few a
second) reach the screen, never one message per record; a queued snapshot is replaced by a
newer one (RunProgressed.can_replace).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import ProgressBar, Static

from core.api import LoomError, RunController, RunOptions
from core.events import (Progress, RecordFinished, RunFinished, RunResumed, RunStarted,
                         RunSummary, RunWarning)
from core.records import Outcome, RecordResult
from loom_tui import format as fmt
from loom_tui.screens import section_key
from loom_tui.messages import (RunBegan, RunCouldNotStart, RunEnded, RunProgressed, RunWarned,
                               RunWasResumed)
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.stage_counter import StageCounter
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.top_bar import TopBar

STAGES = ("extracted", "transformed", "evaluated", "loaded", "quarantined", "skipped")
PROBLEMS = 10  # errors and rejections kept for the panes, the newest
# The gate said no, or the record's own output stayed invalid: rejections, not faults to fix.
OWN_OUTPUT = {"OutputValidationError", "QualityGate"}


class RunScreen(LoomScreen):
    SECTION = "pipelines"
    TITLE = "Run"
    HELP = ("A run of the pipeline, live: records per stage, records per second, cost so far "
            "against the budget, p50/p95 latency and the latest errors. c cancels it cleanly: "
            "records in flight finish, the rest are skipped, and the run is recorded as "
            "cancelled, resumable from History. The summary appears when it ends. A resumed "
            "run says first what its earlier attempts finished: it loads what they answered "
            "without asking the model again and processes the rest.")
    BINDINGS = [
        Binding("c", "cancel", "Cancel run", tooltip="Stop cleanly: finish records in flight, "
                "skip the rest", id="run.cancel"),
        Binding("o", "quarantine", "Quarantine", tooltip="This run's quarantined records",
                id="run.quarantine"),
        Binding("escape,q", "back", "Back", tooltip="Back (asks first while the run goes: "
                "leaving cancels it)", id="run.back"),
    ]

    def __init__(self, path: Path, *, start: bool = True, options: RunOptions | None = None,
                 resume: str | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.start = start
        self.options = options or RunOptions()
        self.resume = resume  # the id of the unfinished run to finish, else a new run
        self.resumed: RunResumed | None = None
        self.pipeline = self.path.parent.name if self.path.name.startswith("pipeline.") \
            else self.path.stem
        self.run_id: str | None = None
        self.started: RunStarted | None = None
        self.progress: Progress | None = None
        self.summary: RunSummary | None = None
        self.errors: tuple[str, ...] = ()
        self.rejections: tuple[str, ...] = ()
        self.failure: str | None = None
        self.warnings: list[str] = []
        self.cancelling = False
        self._run_controller: RunController | None = None
        self._run_loop: asyncio.AbstractEventLoop | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._run_done = threading.Event()

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield TopBar()
        with Vertical(id="run-body"):
            yield Static(id="run-head")
            with Horizontal(id="run-stages"):
                for stage in STAGES:
                    yield StageCounter(stage, id=f"stage-{stage}")
            yield ProgressBar(id="run-bar", show_eta=False)
            with Vertical(id="run-metrics", classes="pane") as metrics:
                metrics.border_title = "Now"
                yield Static(id="run-metrics-text")
            with VerticalScroll(id="run-summary", classes="pane") as summary:
                summary.border_title = "Summary"
                yield Static(id="run-summary-text")
            # Errors (a provider failing, a timeout: something to fix) apart from rejections
            # (the gate said no, or the output was invalid: the quarantine's business).
            with Horizontal(id="run-problems"):
                with VerticalScroll(id="run-errors", classes="pane") as errors:
                    errors.border_title = "Errors"
                    yield Static(Text("none", style="dim"), id="run-errors-text")
                with VerticalScroll(id="run-rejections", classes="pane") as rejections:
                    rejections.border_title = "Latest rejections"
                    yield Static(Text("none yet", style="dim"), id="run-rejections-text")
        yield LoomFooter()

    def crumbs(self) -> list[str]:
        return [self.pipeline, f"run {self.run_id}" if self.run_id else "run"]

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#run-summary").display = False
        self._draw_head()
        self._draw_metrics()
        if self.start:
            self.drive()

    async def on_unmount(self) -> None:
        # Leaving for good (the app quits): stop the engine now, and give it the moment it
        # needs to skip what it had read and record the run as cancelled.
        if self._run_done.is_set() or self._run_loop is None or self._run_task is None:
            return
        with contextlib.suppress(RuntimeError):  # the run's loop already closed
            self._run_loop.call_soon_threadsafe(self._run_task.cancel)
        await asyncio.to_thread(self._run_done.wait, 30)

    # ------------------------------------------------------------------ the run

    @work(thread=True, exclusive=True, group="run", exit_on_error=False)
    def drive(self) -> None:
        asyncio.run(self._drive())

    async def _drive(self) -> None:
        try:
            self._run_controller = RunController()
            self._run_loop = asyncio.get_running_loop()
            self._run_task = asyncio.current_task()
            if self.cancelling:
                self._run_controller.cancel("cancelled in the workbench")
            workspace = self.workspace.detached()
            try:
                if self.resume is not None:
                    loaded, options = await workspace.prepare_resume(self.path, self.resume)
                else:
                    loaded, options = workspace.load(self.path), self.options
                last: Progress | None = None
                errors: deque[str] = deque(maxlen=PROBLEMS)
                rejections: deque[str] = deque(maxlen=PROBLEMS)
                async for event in workspace.run(loaded, options,
                                                 controller=self._run_controller):
                    if isinstance(event, RecordFinished):
                        _sort_problem(event.result, errors, rejections)
                    elif isinstance(event, Progress):
                        last = event
                        self.post_message(RunProgressed(event, tuple(errors), tuple(rejections)))
                    elif isinstance(event, RunResumed):
                        self.post_message(RunWasResumed(event))
                    elif isinstance(event, RunStarted):
                        self.post_message(RunBegan(event))
                    elif isinstance(event, RunWarning):
                        self.post_message(RunWarned(event.message))
                    elif isinstance(event, RunFinished):
                        # The lists as they ended (a queued snapshot is replaced by this one).
                        self.post_message(RunProgressed(last, tuple(errors), tuple(rejections)))
                        self.post_message(RunEnded(event.summary))
                    # BatchLoaded: the Progress snapshots already count them.
            except LoomError as exc:
                self.post_message(RunCouldNotStart(fmt.error_line(exc)))
            finally:
                await workspace.close()
        finally:
            self._run_done.set()

    @on(RunBegan)
    def _began(self, event: RunBegan) -> None:
        self.started = event.event
        self.run_id = event.event.run_id
        self.pipeline = event.event.pipeline
        self.refresh_top_bar()
        self._draw_head()
        self._draw_metrics()

    @on(RunWasResumed)
    def _resumed(self, event: RunWasResumed) -> None:
        self.resumed = event.event
        self._draw_head()

    @on(RunProgressed)
    def _progressed(self, event: RunProgressed) -> None:
        if event.errors is not None:
            self.errors, self.rejections = event.errors, event.rejections or ()
        progress = event.progress
        if progress is None:
            self._draw_problems()
            return
        self.progress = progress
        for stage in STAGES:
            self.query_one(f"#stage-{stage}", StageCounter).value = getattr(progress, stage)
        bar = self.query_one(ProgressBar)
        done = progress.loaded + progress.quarantined + progress.skipped
        bar.update(total=progress.total_hint or max(progress.extracted, 1), progress=done)
        self._draw_head()
        self._draw_metrics()
        if event.errors is None:  # a snapshot from elsewhere (a test): the engine's own list
            self.rejections = progress.recent_errors
        self._draw_problems()

    @on(RunWarned)
    def _warned(self, event: RunWarned) -> None:
        self.warnings.append(event.warning)
        self.notify(markup=False, message=event.warning, title="warning", severity="warning", timeout=6)

    @on(RunEnded)
    def _ended(self, event: RunEnded) -> None:
        summary = event.summary
        self.summary = summary
        bar = self.query_one(ProgressBar)
        bar.update(total=max(summary.extracted, 1),
                   progress=summary.loaded + summary.quarantined + summary.skipped)
        for stage in ("extracted", "loaded", "quarantined", "skipped"):
            self.query_one(f"#stage-{stage}", StageCounter).value = getattr(summary, stage)
        self.query_one("#stage-loaded", StageCounter).set_class(summary.loaded > 0, "-good")
        self.query_one("#stage-quarantined", StageCounter).set_class(summary.quarantined > 0, "-bad")
        self._draw_head()
        # One summary: the live numbers give way to the final ones.
        self.query_one("#run-metrics").display = False
        pane = self.query_one("#run-summary")
        pane.display = True
        self.query_one("#run-summary-text", Static).update(self._summary(summary))
        self._draw_problems()
        self.refresh_bindings()

    @on(RunCouldNotStart)
    def _could_not_start(self, event: RunCouldNotStart) -> None:
        self.failure = event.error
        self._draw_head()
        # Nothing is going on: no bar sweeping as if it were.
        bar = self.query_one(ProgressBar)
        bar.update(total=1, progress=0)
        bar.display = False
        self.query_one("#run-metrics").display = False
        self.query_one("#run-problems").display = False
        self.query_one("#run-stages").display = False  # nothing was counted: no row of zeros
        pane = self.query_one("#run-summary")
        pane.display = True
        pane.border_title = "Could not run"
        colors = self.app.theme_variables
        what = Text(event.error, style=colors.get("error", ""))
        fix = _what_to_do(event.error, section_key(self, "secrets"))
        self.query_one("#run-summary-text", Static).update(
            Group(what, Text(""), Text(fix, style="bold")) if fix else what)
        self.refresh_bindings()

    def work_failed(self, group: str, message: str) -> None:
        if group == "run":
            self.post_message(RunCouldNotStart(message))
            return
        super().work_failed(group, message)

    # ------------------------------------------------------------------ actions

    @property
    def running(self) -> bool:
        return self.summary is None and self.failure is None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # False hides a key that does nothing now (cancel after the end).
        if action == "cancel":
            return self.running and not self.cancelling
        if action == "quarantine":
            return self.run_id is not None
        return True

    def action_cancel(self) -> None:
        if not self.running or self.cancelling:
            return
        self.cancelling = True
        if self._run_loop is not None and self._run_controller is not None:
            with contextlib.suppress(RuntimeError):  # the run's loop already closed
                self._run_loop.call_soon_threadsafe(self._run_controller.cancel,
                                                "cancelled in the workbench")
        self.notify("Stopping: records in flight finish, the rest are skipped.", timeout=4)
        self._draw_head()
        self.refresh_bindings()

    async def action_quarantine(self) -> None:
        if self.run_id:
            await self.loom.show_quarantine(run_id=self.run_id)

    def losses(self) -> list[str]:
        if self.running and self.start:
            return [f"the run of {self.pipeline} is still going: leaving cancels it (History "
                    "can resume it)"]
        return []

    def action_back(self) -> None:
        losses = self.losses()
        if not losses:
            self.dismiss()
            return
        from loom_tui.screens.confirm import ConfirmScreen

        def leave(answer: tuple[bool, str | None] | None) -> None:
            if answer and answer[0]:
                self.dismiss()

        self.app.push_screen(ConfirmScreen(
            "Run still going", f"The run of {self.pipeline} is still going. Leave and cancel "
            "it? F2–F4 go elsewhere while it runs.", yes="Stop the run", no="Keep it running",
            danger=True), leave)

    # ------------------------------------------------------------------ drawing

    def restyle(self) -> None:
        super().restyle()
        self._draw_head()
        self._draw_metrics()
        self._draw_problems()
        if self.summary is not None:
            self.query_one("#run-summary-text", Static).update(self._summary(self.summary))

    def _draw_head(self) -> None:
        colors = self.app.theme_variables
        head = Text()
        head.append(self.pipeline, "bold")
        if self.run_id:
            head.append(f"  run {self.run_id}", "dim")
        if self.failure is not None:
            status, color = "could not start", "error"
        elif self.summary is not None:
            status = self.summary.status
            color = fmt.STATUS_COLOR.get(status, "")
        elif self.cancelling:
            status, color = "cancelling…", "warning"
        else:
            status, color = ("running" if self.started else "starting…"), "accent"
        head.append("  ● ", colors.get(color, ""))
        head.append(status, f"bold {colors.get(color, '')}")
        if self.started is not None:
            head.append(f"\n{self.started.source} → {self.started.provider}:"
                        f"{self.started.model} → {self.started.destination}", "dim")
        resumed = self.resumed
        if resumed is not None:
            head.append(f"\nresumed (attempt {resumed.attempt}): {resumed.loaded:,} loaded and "
                        f"{resumed.quarantined:,} quarantined before · {resumed.from_store:,} "
                        f"loaded from their stored answers, without a call", "dim")
        elif self.resume is not None and self.summary is None and self.failure is None:
            head.append(f"\nresuming run {self.resume}…", "dim")
        self.query_one("#run-head", Static).update(head)

    def _draw_metrics(self) -> None:
        p = self.progress
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        summary = self.summary
        if summary is not None:
            # Finished: the summary's numbers are the final word.
            done = summary.loaded + summary.quarantined + summary.skipped
            rate = done / summary.duration_s if summary.duration_s else 0.0
            budget = self.started.budget_usd if self.started is not None else None
            grid.add_row("throughput", f"{rate:,.1f} records/s over {fmt.duration(summary.duration_s)}")
            grid.add_row("latency", f"p50 {fmt.latency(summary.latency_p50_s)} · "
                                    f"p95 {fmt.latency(summary.latency_p95_s)}")
            grid.add_row("cost", self._cost_line(summary.cost_usd, budget))
            grid.add_row("tokens", f"{summary.tokens.describe(' · ')} · "
                                   f"{fmt.plural(summary.llm_calls, 'call')} · "
                                   f"{summary.cache_hits:,} cached")
            if summary.savings_usd:
                grid.add_row("saved", _savings(summary.savings_usd))
            self.query_one("#run-metrics").border_title = "Final"
            self.query_one("#run-metrics-text", Static).update(grid)
            return
        if p is None:
            grid.add_row("", Text("waiting for the first records…", style="dim"))
            self.query_one("#run-metrics-text", Static).update(grid)
            return
        grid.add_row("throughput", f"{p.records_per_s:,.1f} records/s · {p.in_flight} in flight "
                                   f"(concurrency {p.concurrency})")
        grid.add_row("latency", f"p50 {fmt.latency(p.latency_p50_s)} · "
                                f"p95 {fmt.latency(p.latency_p95_s)}")
        grid.add_row("cost", self._cost_line(p.cost_usd, p.budget_usd))
        grid.add_row("tokens", f"{p.tokens.describe(' · ')} · "
                               f"{fmt.plural(p.llm_calls, 'call')} · {p.cache_hits:,} cached")
        if p.cache_read_tokens or p.cache_write_tokens:
            grid.add_row("saved", _savings({"prompt_cache": p.prompt_cache_saved_usd}))
        grid.add_row("elapsed", fmt.duration(p.elapsed_s))
        self.query_one("#run-metrics-text", Static).update(grid)

    def _cost_line(self, cost: float | None, budget: float | None) -> Text:
        if budget is None:
            return Text.assemble(fmt.money(cost), ("  no budget set", "dim"))
        if cost is None:
            return Text(f"unknown of {fmt.money(budget)} budget", style="dim")
        share = min(1.0, cost / budget) if budget else 1.0
        width = 20
        filled = round(share * width)
        colors = self.app.theme_variables
        color = colors.get("error" if share >= 0.9 else "warning" if share >= 0.6 else "success", "")
        return Text.assemble(
            f"{fmt.money(cost)} of {fmt.money(budget)} budget  ",
            ("━" * filled, color), ("━" * (width - filled), "dim"), f" {share:.0%}")

    def _draw_problems(self) -> None:
        colors = self.app.theme_variables
        for pane, items, color, none in (
                ("errors", self.errors, "error", "none"),
                ("rejections", self.rejections, "warning",
                 "none" if self.summary is not None else "none yet")):
            lines = [Text(fmt.one_line(item, 400), style=colors.get(color, ""))
                     for item in reversed(items)]  # the newest first
            self.query_one(f"#run-{pane}-text", Static).update(
                Group(*lines) if lines else Text(none, style="dim"))

    def _summary(self, summary: RunSummary) -> Table:
        colors = self.app.theme_variables
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        color = colors.get(fmt.STATUS_COLOR.get(summary.status, ""), "")
        grid.add_row("status", Text.assemble((summary.status, f"bold {color}"),
                                             f" · {fmt.duration(summary.duration_s)}"))
        if summary.status_reason:
            grid.add_row("reason", Text(summary.status_reason, style=color))
        judged = summary.loaded + summary.quarantined
        # Skipped records were never judged (a cancel, a budget): they are not rejections.
        rejected = f"{summary.quarantined / judged:.1%} of judged rejected" if judged else \
            "none judged"
        grid.add_row("records", f"{summary.extracted:,} extracted, {summary.loaded:,} loaded, "
                                f"{summary.quarantined:,} quarantined, {summary.skipped:,} skipped "
                                f"({rejected})")
        done = summary.loaded + summary.quarantined + summary.skipped
        rate = done / summary.duration_s if summary.duration_s else 0.0
        grid.add_row("throughput", f"{rate:,.1f} records/s")
        by_stage = ", ".join(f"{stage} {fmt.money(cost)}"
                             for stage, cost in summary.cost_by_stage.items())
        grid.add_row("cost", fmt.money(summary.cost_usd) + (f" ({by_stage})" if by_stage else ""))
        budget = self.started.budget_usd if self.started is not None else None
        if budget is not None:
            grid.add_row("budget", self._cost_line(summary.cost_usd, budget))
        grid.add_row("tokens", f"{summary.tokens.describe()} · "
                               f"{fmt.plural(summary.llm_calls, 'call')}, "
                               f"{summary.cache_hits:,} cached")
        if summary.savings_usd:
            grid.add_row("saved", _savings(summary.savings_usd))
        grid.add_row("latency", f"p50 {fmt.latency(summary.latency_p50_s)} · p95 "
                                f"{fmt.latency(summary.latency_p95_s)} · p99 "
                                f"{fmt.latency(summary.latency_p99_s)}")
        for warning in summary.warnings:
            grid.add_row("warning", Text(warning, style=colors.get("warning", "")))
        if summary.quarantined:
            grid.add_row("next", "o opens this run's quarantine")
        return grid


def _savings(savings: dict[str, float]) -> str:
    """`$0.012345 saved by prompt caching` (a lever that cost more than it saved: `more`)."""
    names = {"prompt_cache": "prompt caching"}
    return " · ".join(f"{fmt.money(abs(amount))} {'saved' if amount >= 0 else 'more'} by "
                      f"{names.get(lever, lever.replace('_', ' '))}"
                      for lever, amount in savings.items())


def _sort_problem(result: RecordResult, errors: deque[str], rejections: deque[str]) -> None:
    """A finished record that did not load: an error (something failed: a provider, a
    timeout, a template) or a rejection (the gate, or an output that stayed invalid)."""
    if result.outcome is Outcome.LOADED or not result.reason:
        return
    line = f"{result.record.id}: {result.reason}"[:300]
    if result.error_type and result.error_type not in OWN_OUTPUT:
        errors.append(line)
    elif result.outcome is Outcome.QUARANTINED:
        rejections.append(line)


def _what_to_do(error: str, secrets_key: str) -> str | None:
    """The next step for a run that could not start, when the error says what is missing."""
    import re

    missing = re.search(r"secret \$?\{?([A-Z][A-Z0-9_]*)\}? is not set|\b([A-Z][A-Z0-9_]*_(?:KEY|TOKEN|"
                        r"PASSWORD|SECRET))\b", error)
    if missing and ("not set" in error or "missing" in error or "no " in error):
        name = missing.group(1) or missing.group(2)
        return (f"{secrets_key} opens Secrets: store {name} there (n), then run again. Or export {name} "
                "before starting loom.")
    return None
