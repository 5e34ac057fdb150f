"""History: every run, newest first, paged from the store by (started_at, run_id); the
highlighted run's pipeline charted (cost and latency across runs); two marked runs compared."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Select, Static

from core.api import PipelineRun
from loom_tui import format as fmt
from loom_tui.messages import (PageFetched, PageWanted, RunsCompared, RunsCounted,
                               RunSeriesFetched)
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.paged_table import Cell, Column, PagedTable, Row, Tone
from loom_tui.widgets.run_charts import RunCharts
from loom_tui.widgets.top_bar import TopBar

COLUMNS = (
    Column("run", 22),
    Column("pipeline", None, min_width=10),
    Column("status", 9),
    Column("started", 16),
    Column("records", 7, "right"),
    Column("rejected", 8, "right"),
    Column("cost", 9, "right"),
    Column("duration", 8, "right"),
    Column("p50", 6, "right"),
    Column("p95", 6, "right"),
)
STATUSES = ("success", "partial", "failed", "cancelled", "running")
PAGE = 100
SERIES = 40


class HistoryScreen(LoomScreen):
    SECTION = "history"
    TITLE = "History"
    HELP = ("Every run, newest first, paged from the store. The charts show the highlighted "
            "run's pipeline: cost and p50/p95 latency across its last runs. Mark two runs with "
            "space and press c to compare their configuration (prompt and context versions, "
            "model) and results side by side. Enter opens the run's quarantine.")
    BINDINGS = [
        Binding("space", "mark", "Mark", tooltip="Mark a run to compare (two)", id="history.mark"),
        Binding("c", "compare", "Compare", tooltip="Compare the two marked runs",
                id="history.compare"),
        Binding("enter", "quarantine", "Quarantine", tooltip="This run's quarantined records",
                id="history.quarantine"),
        Binding("ctrl+r", "refresh", "Refresh", tooltip="Read the history again",
                id="history.refresh"),
        Binding("escape", "unmark", "Clear marks", show=False, id="history.unmark"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filters: dict[str, Any] = {}
        self.charted: str | None = None
        self._pipelines_known: list[str] = []

    def compose(self) -> ComposeResult:
        yield TopBar()
        with Horizontal(id="h-filters"):
            yield Select([], prompt="any pipeline", allow_blank=True, id="h-pipeline")
            yield Select([(status, status) for status in STATUSES], prompt="any status",
                         allow_blank=True, id="h-status")
            yield Static(id="h-marks", classes="hint")
        with Vertical(id="h-list", classes="pane") as pane:
            pane.border_title = "Runs"
            yield PagedTable(COLUMNS, page_size=PAGE, window_size=400, markable=True,
                             id="h-table", empty="no runs yet: run a pipeline (Pipelines, r)")
            yield Static(id="h-run-detail")
        with Vertical(id="h-charts", classes="pane") as charts:
            charts.border_title = "Across runs"
            yield RunCharts(id="h-run-charts")
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.load_pipeline_names()
        self.query_one(PagedTable).focus()
        self.query_one(PagedTable).reset()

    def on_screen_resume(self) -> None:
        self._marks_hint()

    # ------------------------------------------------------------------ filters

    @work(exclusive=True, group="names", exit_on_error=False)
    async def load_pipeline_names(self) -> None:
        names = await self.workspace.pipeline_names()
        self.app.call_later(self._set_pipeline_names, names)

    def _set_pipeline_names(self, names: list[str]) -> None:
        self._pipelines_known = names
        select = self.query_one("#h-pipeline", Select)
        with self.prevent(Select.Changed):
            select.set_options([(name, name) for name in names])
            if self.filters.get("pipeline") in names:
                select.value = self.filters["pipeline"]

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        key = {"h-pipeline": "pipeline", "h-status": "status"}.get(event.select.id or "")
        value = None if event.value is Select.NULL else event.value
        if key is None or self.filters.get(key) == value:
            return
        self.filters[key] = value
        table = self.query_one(PagedTable)
        table.clear_marks()
        table.reset()

    # ------------------------------------------------------------------ paging

    @on(PageWanted, "#h-table")
    def _page_wanted(self, event: PageWanted) -> None:
        anchor: PipelineRun | None = event.anchor
        paging: dict[str, Any] = {}
        # The table lists newest first: "after" in the table is older in time.
        if event.direction == "after" and anchor is not None:
            paging["before"] = (anchor.started_at, anchor.run_id)
        elif event.direction == "before" and anchor is not None:
            paging["after"] = (anchor.started_at, anchor.run_id)
        elif event.direction == "last":
            paging["oldest"] = True
        self.fetch_page(dict(self.filters), paging, event.direction, event.generation)

    @work(group="page", exit_on_error=False)
    async def fetch_page(self, filters: dict[str, Any], paging: dict[str, Any], direction: str,
                         generation: int) -> None:
        table = self.query_one(PagedTable)
        runs = await self.workspace.runs(pipeline=filters.get("pipeline"),
                                         status=filters.get("status"), limit=PAGE, **paging)
        self.post_message(PageFetched(table, runs, direction, generation))
        if direction == "first":
            total = await self.workspace.count_runs(pipeline=filters.get("pipeline"),
                                                    status=filters.get("status"))
            self.post_message(RunsCounted(total, generation))

    @on(PageFetched)
    def _page_fetched(self, event: PageFetched) -> None:
        table = self.query_one(PagedTable)
        rows = [Row(run.run_id, self._cells(run), run) for run in event.items]
        table.show_page(rows, event.direction, event.generation)  # type: ignore[arg-type]
        self._subtitle()
        if not table.rows:
            self.query_one("#h-run-detail", Static).update("")

    @on(RunsCounted)
    def _counted(self, event: RunsCounted) -> None:
        table = self.query_one(PagedTable)
        if event.generation == table.generation:
            table.total = event.total
            self._subtitle()

    def _subtitle(self) -> None:
        self.query_one("#h-list").border_subtitle = self.query_one(PagedTable).position

    def _cells(self, run: PipelineRun) -> tuple[Cell, ...]:
        status = Tone(run.status, fmt.STATUS_COLOR.get(run.status, "foreground"))
        return (run.run_id, run.pipeline_name, status, fmt.when(run.started_at),
                fmt.count(run.extracted), fmt.percent(fmt.rejection(run.loaded, run.quarantined)),
                fmt.money(run.cost_usd), fmt.duration(run.duration_s),
                fmt.latency(run.latency_p50_s), fmt.latency(run.latency_p95_s))

    def work_failed(self, group: str, message: str) -> None:
        if group == "page":
            table = self.query_one(PagedTable)
            for direction in ("first", "after", "before", "last"):
                table.page_failed(direction, table.generation)  # type: ignore[arg-type]
        super().work_failed(group, message)

    # ------------------------------------------------------------------ the highlighted run

    @on(PagedTable.Highlighted, "#h-table")
    def _highlighted(self, event: PagedTable.Highlighted) -> None:
        self._subtitle()
        run: PipelineRun | None = event.row.item if event.row is not None else None
        detail = self.query_one("#h-run-detail", Static)
        if run is None:
            detail.update("")
            return
        detail.update(self._detail(run))
        if run.pipeline_name != self.charted:
            self.charted = run.pipeline_name
            self.fetch_series(run.pipeline_name)

    def restyle(self) -> None:
        super().restyle()
        row = self.query_one(PagedTable).highlighted
        if row is not None:
            self.query_one("#h-run-detail", Static).update(self._detail(row.item))

    def _detail(self, run: PipelineRun) -> Text:
        colors = self.app.theme_variables
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{run.provider}:{run.model}", "bold")
        text.append(f" · prompt {fmt.short_hash(run.prompt_hash)}", "dim")
        text.append(f" · {fmt.count(run.loaded)} loaded, {fmt.count(run.quarantined)} "
                    f"quarantined, {fmt.count(run.skipped)} skipped", "dim")
        text.append(f" · {run.input_tokens:,}→{run.output_tokens:,} tokens", "dim")
        reason = run.status_reason or run.error_message
        if reason:
            text.append(f" · {fmt.one_line(reason, 160)}",
                        colors.get(fmt.STATUS_COLOR.get(run.status, ""), ""))
        return text

    @work(exclusive=True, group="series", exit_on_error=False)
    async def fetch_series(self, pipeline: str) -> None:
        self.post_message(RunSeriesFetched(pipeline, await self.workspace.run_series(
            pipeline, limit=SERIES)))

    @on(RunSeriesFetched)
    def _series(self, event: RunSeriesFetched) -> None:
        if event.pipeline == self.charted:
            self.query_one(RunCharts).show(event.pipeline, event.points)

    # ------------------------------------------------------------------ actions

    def action_mark(self) -> None:
        table = self.query_one(PagedTable)
        table.toggle_mark()
        table.action_cursor(1)
        self._marks_hint()

    def action_unmark(self) -> None:
        self.query_one(PagedTable).clear_marks()
        self._marks_hint()

    def _marks_hint(self) -> None:
        marks = self.query_one(PagedTable).marks
        hint = self.query_one("#h-marks", Static)
        if not marks:
            hint.update("space marks two runs · c compares them")
        elif len(marks) == 1:
            hint.update(f"marked {next(iter(marks))} · mark one more, then c")
        else:
            hint.update(f"{len(marks)} marked · c compares" if len(marks) == 2
                        else f"{len(marks)} marked: compare takes two (escape clears)")

    def action_compare(self) -> None:
        marks = list(self.query_one(PagedTable).marks.values())
        if len(marks) != 2:
            self.notify(f"Mark exactly two runs with space ({len(marks)} marked).",
                        severity="warning")
            return
        older, newer = sorted(marks, key=lambda run: (run.started_at, run.run_id))
        self.compare(older.run_id, newer.run_id)

    @work(exclusive=True, group="compare", exit_on_error=False)
    async def compare(self, run_a: str, run_b: str) -> None:
        self.post_message(RunsCompared(await self.workspace.compare_runs(run_a, run_b)))

    @on(RunsCompared)
    def _compared(self, event: RunsCompared) -> None:
        from loom_tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(event.comparison))

    @on(PagedTable.Activated, "#h-table")
    async def action_quarantine(self) -> None:
        row = self.query_one(PagedTable).highlighted
        if row is not None:
            await self.loom.show_quarantine(run_id=row.item.run_id)

    def action_refresh(self) -> None:
        self.charted = None
        self.load_pipeline_names()
        self.query_one(PagedTable).reset()
