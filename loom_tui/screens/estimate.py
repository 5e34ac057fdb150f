"""What a whole run would cost before it spends anything (`loom --run … --estimate` in the
workbench): the first records are transformed and judged now, exactly as a run would (nothing
loaded, no run recorded), and their cost, tokens, calls and time are scaled to the whole
source. The work runs in a worker while the dialog says so; escape stops it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rich.markup import escape
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static
from textual.worker import Worker, WorkerState

from core.api import Estimate, LoadedSpec
from loom_tui import format as fmt
from loom_tui.messages import EstimateReady

SAMPLE = 20  # records, as `--estimate` without N
# Before a run (F5, r): a run projected under all three of `workbench.confirm_run_above` in
# config.yaml (core.config.ConfirmRunAbove: $0.10, 120 s, 1000 records by default) starts at
# once; above any, it asks.


class EstimateScreen(ModalScreen[bool]):
    """Dismisses with True when the user asks to run the pipeline from here."""

    BINDINGS = [
        Binding("r", "run", "Run it", id="estimate.run"),
        Binding("escape", "close", "Close", id="estimate.close"),
    ]

    def __init__(self, path: Path, loaded: LoadedSpec | None = None, *,
                 sample: int = SAMPLE, confirm: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.loaded = loaded
        self.sample = sample
        # Before a run: small runs start at once, big ones ask (Cancel focused).
        self.confirm = confirm
        self.estimate: Estimate | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="estimate-body") as body:
            name = self.loaded.spec.name if self.loaded is not None else self.path.parent.name
            body.border_title = f"Run {escape(name)}?" if self.confirm else f"Estimate · {escape(name)}"
            body.border_subtitle = "escape closes"
            yield Static(id="estimate-text")
            if self.confirm:
                with Horizontal(id="confirm-buttons"):
                    yield Button("Run", variant="primary", id="estimate-run", disabled=True)
                    yield Button("Cancel", id="estimate-cancel")

    def on_mount(self) -> None:
        if self.confirm:
            self.query_one("#estimate-cancel", Button).focus()
        colors = self.app.theme_variables
        self.query_one("#estimate-text", Static).update(Text(
            f"◌ transforming and judging the first {fmt.plural(self.sample, 'record')}, as a "
            "run would (nothing is loaded, no run is recorded)…",
            style=f"bold {colors.get('accent', '')}"))
        self.project(self.path, self.loaded, self.sample)

    @work(exclusive=True, group="estimate", exit_on_error=False)
    async def project(self, path: Path, loaded: LoadedSpec | None, sample: int) -> None:
        workspace = self.app.workspace  # type: ignore[attr-defined]
        if loaded is None:
            loaded = await asyncio.to_thread(workspace.load, path)
        self.post_message(EstimateReady(await workspace.estimate(loaded, sample=sample)))

    @on(EstimateReady)
    def _ready(self, event: EstimateReady) -> None:
        self.estimate = event.estimate
        if self.confirm and not self.big(event.estimate):
            self.dismiss(True)
            return
        self.query_one("#estimate-body").border_subtitle = "r runs it · escape closes"
        self.query_one("#estimate-text", Static).update(self._describe(event.estimate))
        if self.confirm:
            self.query_one("#estimate-run", Button).disabled = False

    def big(self, estimate: Estimate) -> bool:
        """Worth a question before it starts: costly, long, many records, or over budget."""
        above = self.app.workspace.config.workbench.confirm_run_above  # type: ignore[attr-defined]
        cost = estimate.projected_cost_usd
        budget = self._budget()
        return (cost is None or cost > above.cost_usd
                or (budget is not None and cost > budget)
                or (estimate.projected_duration_s or 0.0) > above.duration_s
                or estimate.total > above.records)

    def _budget(self) -> float | None:
        budget = getattr(self.loaded.spec, "budget", None) if self.loaded is not None else None
        return getattr(budget, "max_cost_usd", None) if budget is not None else None

    @on(Button.Pressed, "#estimate-run")
    def _run_pressed(self) -> None:
        self.action_run()

    @on(Button.Pressed, "#estimate-cancel")
    def _cancel_pressed(self) -> None:
        self.action_close()

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            colors = self.app.theme_variables
            self.error = fmt.error_line(event.worker.error)
            self.query_one("#estimate-text", Static).update(Text(
                f"Could not estimate: {self.error}", style=f"bold {colors.get('error', '')}"))
            if self.confirm:
                # The run itself says what stops it (and what to do) on its own screen.
                self.query_one("#estimate-run", Button).disabled = False

    def _describe(self, estimate: Estimate) -> Group:
        colors = self.app.theme_variables
        about = "" if estimate.total_exact else "about "
        if estimate.sample >= estimate.total:
            intro = Text.assemble("From all ", (f"{estimate.sample:,}", "bold"),
                                  " records, transformed and judged now.")
        else:
            intro = Text.assemble("From ", (f"{estimate.sample:,}", "bold"), f" of {about}",
                                  (f"{estimate.total:,}", "bold"),
                                  " records, transformed and judged now.")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        cost = estimate.projected_cost_usd
        grid.add_row("whole run", Text.assemble(
            (fmt.money(cost), f"bold {colors.get('accent', '')}"),
            (" (a model has no known price)" if cost is None else "", "dim"),
            f" · {estimate.projected_calls:,} calls"))
        grid.add_row("tokens", f"{estimate.projected_input_tokens:,} in · "
                     f"{estimate.projected_output_tokens:,} out")
        duration = estimate.projected_duration_s
        grid.add_row("time", (_about(duration) if duration is not None
                              else "unknown: every sample answer came from the cache")
                     + f" at concurrency {estimate.concurrency}")
        grid.add_row("sample", f"{estimate.loaded} would load · {estimate.quarantined} "
                     f"quarantined · {estimate.skipped} skipped · {estimate.calls} calls "
                     f"({estimate.cache_hits} from the cache, counted at full price) · "
                     f"{fmt.money(estimate.cost_usd)}")
        budget = self._budget()
        if budget is not None:
            over = cost is not None and cost > budget
            grid.add_row("budget", Text(
                f"{fmt.money(budget)}" + (" · the run would stop there" if over else ""),
                style=colors.get("warning", "") if over else ""))
        elif self.confirm:
            grid.add_row("budget", Text("none set (budget.max_cost_usd)", style="dim"))
        for warning in estimate.warnings:
            grid.add_row("warning", Text(fmt.one_line(warning, 300),
                                         style=colors.get("warning", "")))
        return Group(intro, Text(""), grid)

    def action_run(self) -> None:
        if self.estimate is not None or (self.confirm and self.error is not None):
            self.dismiss(True)

    def action_close(self) -> None:
        self.dismiss(False)


def _about(seconds: float) -> str:
    """A projection's precision: whole seconds, minutes or tenths of hours."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"
