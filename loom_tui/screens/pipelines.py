"""Home: every pipeline file under the folder, valid or not, with its last run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static

from core.api import PipelineEntry, PipelineRun, pipeline_key
from loom_tui import format as fmt
from loom_tui.messages import PageWanted, PipelinesScanned
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.paged_table import Cell, Column, PagedTable, Row, Tone
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.top_bar import TopBar

COLUMNS = (
    Column("pipeline", 20),
    Column("file", None, min_width=12, ratio=3, drop=5),
    Column("state", None, min_width=14, ratio=2),
    Column("last run", 9),
    Column("loaded", 6, "right"),
    Column("quar.", 5, "right"),
    Column("cost", 9, "right"),
    Column("when", 16, drop=4),
)


class PipelinesScreen(LoomScreen):
    SECTION = "pipelines"
    TITLE = "Pipelines"
    HELP = ("Every pipeline file under the folder (YAML with extract: and transform:). An "
            "invalid one shows its error and cannot be opened until it is fixed. Enter opens "
            "the workbench: records, the prompt and its live output. r runs the pipeline; e "
            "first projects what the run would cost and take, from 20 records.")
    BINDINGS = [
        Binding("enter", "open", "Open", tooltip="Open the workbench on this pipeline",
                id="pipelines.open"),
        Binding("r", "run", "Run", tooltip="Run this pipeline and watch it", id="pipelines.run"),
        Binding("e", "estimate", "Estimate", tooltip="Project a whole run's cost, tokens and time "
                "from 20 records, before spending", id="pipelines.estimate"),
        Binding("ctrl+r", "rescan", "Rescan", tooltip="Look for pipeline files again",
                id="pipelines.rescan"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.last_runs: dict[str, PipelineRun] = {}
        self._scanned_once = False
        self._keep: object = None  # the pipeline the cursor was on before a rescan

    def compose(self) -> ComposeResult:
        yield TopBar()
        with Vertical(id="pipelines-list", classes="pane") as pane:
            pane.border_title = "Pipelines"
            pane.tooltip = str(self.loom.folder)
            yield PagedTable(COLUMNS, page_size=10_000, id="pipelines-table",
                             empty=self._empty_text())
        with Vertical(id="pipelines-detail", classes="pane") as detail:
            detail.border_title = "Pipeline"
            yield Static(id="pipelines-detail-text")
        yield LoomFooter()

    def _empty_text(self) -> str:
        return (f"no pipelines under {self.loom.folder} — a pipeline is a YAML file with "
                "extract: and transform: (see sample_pipelines/ in Loom's repository)")

    def crumbs(self) -> list[str]:
        return [self.loom.folder.name or str(self.loom.folder)]

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(PagedTable).reset()

    def on_screen_resume(self) -> None:
        # Back from a run or the workbench: the last-run columns may have changed.
        if self._scanned_once:
            self._rescan()
        self._scanned_once = True

    def refresh_data(self) -> None:
        self._rescan()

    def _rescan(self) -> None:
        table = self.query_one(PagedTable)
        self._keep = table.highlighted.key if table.highlighted is not None else None
        table.reset()

    # ------------------------------------------------------------------ work

    @on(PageWanted, "#pipelines-table")
    def _page_wanted(self, event: PageWanted) -> None:
        if event.direction == "first":
            self.scan(event.generation)

    @work(exclusive=True, group="scan", exit_on_error=False)
    async def scan(self, generation: int) -> None:
        entries = await asyncio.to_thread(self.workspace.pipelines)
        last_runs = await self.workspace.last_runs_by_file()
        self.post_message(PipelinesScanned(entries, last_runs, generation))

    @on(PipelinesScanned)
    def _scanned(self, event: PipelinesScanned) -> None:
        self.last_runs = event.last_runs
        table = self.query_one(PagedTable)
        table.total = len(event.entries)
        rows = [Row(entry.path, self._cells(entry), entry) for entry in event.entries]
        table.show_page(rows, "first", event.generation)
        # A rescan (back from a run, a modal closed) keeps the cursor on the same pipeline.
        keys = [row.key for row in rows]
        if self._keep in keys:
            table.cursor = keys.index(self._keep)
        pane = self.query_one("#pipelines-list")
        invalid = sum(1 for entry in event.entries if not entry.valid)
        pane.border_subtitle = (fmt.plural(len(event.entries), "pipeline")
                                + (f" · {invalid} invalid" if invalid else ""))
        if not event.entries:
            self._show_detail(None)

    def work_failed(self, group: str, message: str) -> None:
        if group == "scan":
            table = self.query_one(PagedTable)
            table.page_failed("first", table.generation)
        super().work_failed(group, message)

    # ------------------------------------------------------------------ display

    def _last_run(self, entry: PipelineEntry) -> PipelineRun | None:
        """The newest run of this file (a copy elsewhere with the same name has its own)."""
        return self.last_runs.get(pipeline_key(entry.path)) or self.last_runs.get(entry.name)

    def _cells(self, entry: PipelineEntry) -> tuple[Cell, ...]:
        relative = _relative(entry.path, self.loom.folder)
        if entry.valid:
            state = Tone("✓ valid", "success")
        else:
            state = Tone(f"✗ {_error_without_path(entry)}", "error")
        run = self._last_run(entry)
        if run is None:
            return (entry.name, relative, state, Tone("never", "dim"), "", "", "", "")
        status = Tone(run.status, fmt.STATUS_COLOR.get(run.status, "foreground"))
        return (entry.name, relative, state, status, fmt.count(run.loaded),
                fmt.count(run.quarantined), fmt.money(run.cost_usd), fmt.when(run.started_at))

    @on(PagedTable.Highlighted, "#pipelines-table")
    def _highlighted(self, event: PagedTable.Highlighted) -> None:
        self._show_detail(event.row.item if event.row else None)

    def restyle(self) -> None:
        super().restyle()
        self._show_detail(self._chosen())

    def _show_detail(self, entry: PipelineEntry | None) -> None:
        detail = self.query_one("#pipelines-detail-text", Static)
        if entry is None:
            detail.update(Text("Nothing selected.", style="dim"))
            return
        detail.update(self._describe(entry))

    def _describe(self, entry: PipelineEntry) -> Any:
        colors = self.app.theme_variables
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        if not entry.valid or entry.loaded is None:
            grid.add_row("file", _relative(entry.path, self.loom.folder))
            grid.add_row("error", Text(_error_without_path(entry), style=colors.get("error", "")))
            grid.add_row("", Text("Fix the file, then ctrl+r rescans.", style="dim"))
            return grid
        spec = entry.loaded.spec
        title = Text.assemble((spec.name, "bold"), f" {spec.version}")
        if spec.description:
            title.append(f" — {spec.description}", "italic")
        evaluators = " · ".join(f"{e.name} ({e.type})" for e in spec.evaluate.evaluators)
        transform = spec.transform
        context = ", ".join(transform.context_files()) or "none"
        grid.add_row("extract", Text(f"{spec.extract.source}"
                     + (f"  id: {spec.extract.id_field}" if spec.extract.id_field else "")))
        grid.add_row("transform", Text(f"{transform.provider}:{transform.model} · prompt "
                     f"{transform.prompt} · context {context}"))
        gate = spec.evaluate.quality_gate
        limit = spec.evaluate.max_rejection_rate
        grid.add_row("evaluate", Text((evaluators or "no evaluators") + f" → {gate}"
                     + (f", max rejection {limit:.0%}" if limit is not None else "")))
        grid.add_row("load", Text(f"{spec.load.destination} ({spec.load.mode})"))
        run = self._last_run(entry)
        if run is not None:
            status = Text(run.status, style=colors.get(fmt.STATUS_COLOR.get(run.status, ""), ""))
            grid.add_row("last run", Text.assemble(
                f"{run.run_id} · ", status,
                f" · {fmt.count(run.extracted)} extracted, {fmt.count(run.loaded)} loaded, "
                f"{fmt.count(run.quarantined)} quarantined · {fmt.money(run.cost_usd)} · "
                f"{fmt.when(run.started_at)}"))
        else:
            grid.add_row("last run", Text("never run: press r", style="dim"))
        return Group(title, grid)

    # ------------------------------------------------------------------ actions

    def _chosen(self) -> PipelineEntry | None:
        row = self.query_one(PagedTable).highlighted
        return row.item if row is not None else None

    def _usable(self) -> PipelineEntry | None:
        entry = self._chosen()
        if entry is None:
            self.notify("No pipeline here yet.", severity="warning")
            return None
        if not entry.valid:
            self.notify(markup=False, message=f"{entry.name} is invalid: {_error_without_path(entry)}",
                        severity="error", timeout=8)
            return None
        return entry

    @on(PagedTable.Activated, "#pipelines-table")
    def action_open(self) -> None:
        entry = self._usable()
        if entry is not None:
            self.loom.open_pipeline(entry.path)

    def action_run(self) -> None:
        entry = self._usable()
        if entry is not None:
            self.loom.confirm_run(entry.path, entry.loaded)

    def action_estimate(self) -> None:
        entry = self._usable()
        if entry is not None:
            self.loom.estimate(entry.path, entry.loaded)

    def action_rescan(self) -> None:
        self._rescan()


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder))
    except ValueError:
        return str(path)


def _error_without_path(entry: PipelineEntry) -> str:
    """The error without the file's path (the file column already says it)."""
    error = entry.error or ""
    for prefix in (str(entry.path), str(Path(entry.path).resolve())):
        if error.startswith(prefix + ":"):
            rest = error[len(prefix) + 1:].lstrip()
            head, _, tail = rest.partition(":")
            return f"line {head}:{tail}" if head.isdigit() else rest
    return error
