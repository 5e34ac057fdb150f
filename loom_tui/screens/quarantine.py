"""The quarantine: records that did not pass, across runs, paged from the store.

Filter by pipeline, run, stage, reason and status; inspect one record whole; approve (load the
output as it is), edit then approve, reprocess (transform and evaluate again with the current
prompt and model) or discard — one record, or every marked one. Each action is stored with its
time and shows in the list and the detail at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import Input, Select

from core.api import ActionResult, QuarantinedRecord
from loom_tui import format as fmt
from loom_tui.messages import (PageFetched, PageWanted, QuarantineActionsApplied,
                               QuarantineCounted, QuarantineDetailFetched)
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.paged_table import Cell, Column, PagedTable, Row, Tone
from loom_tui.widgets.quarantine_detail import QuarantineDetail
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.top_bar import TopBar

COLUMNS = (
    Column("id", 6, "right"),
    Column("run", 22, drop=2),
    Column("pipeline", 14, drop=1),
    Column("record", 8),
    Column("stage", 9),
    Column("status", 11),
    Column("reason", None, min_width=24),
)
STAGES = ("extract", "transform", "evaluate", "load")
STATUSES = ("open", "approved", "reprocessed", "discarded")
ANY = "any"
PAGE = 100
DETAIL_DELAY_S = 0.15  # holding page-down renders no detail until the cursor rests


class QuarantineScreen(LoomScreen):
    SECTION = "quarantine"
    TITLE = "Quarantine"
    HELP = ("Records that did not pass, across runs, newest last, paged from the store. Filter "
            "above the list; the detail on the right shows every input field, the prompt it was "
            "sent, the model's raw answer, the output, every score and explanation and every "
            "action taken. space marks records for a bulk action; "
            "without marks an action works on the highlighted record.")
    BINDINGS = [
        Binding("a", "approve", "Approve", tooltip="Load the output as it is", id="quarantine.approve"),
        Binding("e", "edit", "Edit+approve", tooltip="Fix the output by hand, then load it",
                id="quarantine.edit"),
        Binding("r", "reprocess", "Reprocess", tooltip="Transform and evaluate again with the "
                "current prompt and model; loads if it passes now", id="quarantine.reprocess"),
        Binding("d", "discard", "Discard", tooltip="Drop for good (asks first)",
                id="quarantine.discard"),
        Binding("space", "mark", "Mark", tooltip="Mark the record for a bulk action",
                id="quarantine.mark"),
        Binding("ctrl+r", "refresh", "Refresh", tooltip="Read the quarantine again",
                id="quarantine.refresh"),
        Binding("slash", "filter", "Filter", tooltip="Go to the filters", id="quarantine.filter"),
        Binding("escape", "unmark", "Clear marks", show=False, id="quarantine.unmark"),
        Binding("enter", "inspect", "Inspect", tooltip="The record whole: the detail pane "
                "fills the screen (z or escape gives the list back)", id="quarantine.inspect"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filters: dict[str, Any] = {"status": "open"}
        self.busy: str | None = None
        self._typing: Timer | None = None
        self._detail_timer: Timer | None = None
        self._pipelines_known: list[str] = []
        self._keep: int | None = None  # the record the cursor goes back to after a refresh
        self._advance = False  # after this action, the cursor moves to the next record

    def compose(self) -> ComposeResult:
        yield TopBar()
        with Horizontal(id="q-filters"):
            yield Select([], prompt="any pipeline", allow_blank=True, id="q-pipeline")
            yield Input(placeholder="run id or prefix", id="q-run")
            yield Select([(stage, stage) for stage in STAGES], prompt="any stage",
                         allow_blank=True, id="q-stage")
            yield Input(placeholder="reason contains…", id="q-reason")
            yield Select([(status, status) for status in STATUSES] + [("any status", ANY)],
                         value="open", allow_blank=False, id="q-status")
        with Horizontal(id="q-body"):
            with Vertical(id="q-list", classes="pane") as pane:
                pane.border_title = "Quarantine"
                yield PagedTable(COLUMNS, page_size=PAGE, window_size=400, markable=True,
                                 id="q-table", empty="nothing quarantined for these filters")
            with Vertical(id="q-detail-pane", classes="pane") as detail:
                detail.border_title = "Record"
                yield QuarantineDetail(id="q-detail")
        yield LoomFooter()

    def crumbs(self) -> list[str]:
        return []

    def on_resize(self) -> None:
        self.set_class(self.size.width < 170, "-narrow")

    def on_mount(self) -> None:
        super().on_mount()
        self.load_pipeline_names()
        self.query_one(PagedTable).focus()
        self._reset()

    # ------------------------------------------------------------------ filters

    def set_filters(self, *, run_id: str | None = None, pipeline: str | None = None) -> None:
        """Show one run's (or pipeline's) records, any status (from the run and history screens)."""
        self.query_one("#q-run", Input).value = run_id or ""
        self.filters = {"status": None}
        if run_id:
            self.filters["run_id"] = run_id
        if pipeline:
            self.filters["pipeline"] = pipeline
        with self.prevent(Select.Changed):
            self.query_one("#q-status", Select).value = ANY
            self.query_one("#q-stage", Select).clear()
            pipelines = self.query_one("#q-pipeline", Select)
            if pipeline and pipeline in self._pipelines_known:
                pipelines.value = pipeline
            else:
                pipelines.clear()
        self.query_one("#q-reason", Input).value = ""
        self._reset()

    @work(exclusive=True, group="names", exit_on_error=False)
    async def load_pipeline_names(self) -> None:
        names = await self.workspace.pipeline_names()
        self.app.call_later(self._set_pipeline_names, names)

    def _set_pipeline_names(self, names: list[str]) -> None:
        self._pipelines_known = names
        select = self.query_one("#q-pipeline", Select)
        current = self.filters.get("pipeline")
        with self.prevent(Select.Changed):
            select.set_options([(name, name) for name in names])
            if current in names:
                select.value = current

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        value = None if event.value is Select.NULL or event.value == ANY else event.value
        key = {"q-pipeline": "pipeline", "q-stage": "stage", "q-status": "status"}.get(
            event.select.id or "")
        if key is None or self.filters.get(key) == value:
            return
        self.filters[key] = value
        self._reset()

    @on(Input.Changed, "#q-run, #q-reason")
    def _typed(self) -> None:
        if self._typing is not None:
            self._typing.stop()
        self._typing = self.set_timer(0.35, self._apply_typed)

    @on(Input.Submitted, "#q-run, #q-reason")
    def _submitted(self) -> None:
        self._apply_typed()
        self.query_one(PagedTable).focus()

    def _apply_typed(self) -> None:
        run = self.query_one("#q-run", Input).value.strip() or None
        reason = self.query_one("#q-reason", Input).value.strip() or None
        if (self.filters.get("run_id"), self.filters.get("reason_contains")) == (run, reason):
            return
        self.filters["run_id"] = run
        self.filters["reason_contains"] = reason
        self._reset()

    def _reset(self) -> None:
        table = self.query_one(PagedTable)
        table.clear_marks()
        table.reset()

    # ------------------------------------------------------------------ paging

    @on(PageWanted, "#q-table")
    def _page_wanted(self, event: PageWanted) -> None:
        anchor: QuarantinedRecord | None = event.anchor
        paging: dict[str, Any] = {}
        if event.direction == "after" and anchor is not None:
            paging["after_id"] = anchor.id
        elif event.direction == "before" and anchor is not None:
            paging["before_id"] = anchor.id
        elif event.direction == "last":
            paging["last"] = True
        self.fetch_page(dict(self.filters), paging, event.direction, event.generation)

    @work(group="page", exit_on_error=False)
    async def fetch_page(self, filters: dict[str, Any], paging: dict[str, Any], direction: str,
                         generation: int) -> None:
        filters = {k: v for k, v in filters.items() if v is not None or k == "status"}
        table = self.query_one(PagedTable)
        if filters.get("run_id"):
            run = await self.workspace.get_run(filters["run_id"])
            if run is None:
                self.post_message(QuarantineCounted(0, generation))
                self.post_message(PageFetched(table, [], direction, generation))
                return
            filters["run_id"] = run.run_id
        if direction == "first":
            # The count and the first page together: the page paints first.
            rows = await self.workspace.quarantine(**filters, limit=PAGE, **paging)
            self.post_message(PageFetched(table, rows, direction, generation))
            self.post_message(QuarantineCounted(
                await self.workspace.count_quarantine(**filters), generation))
            return
        rows = await self.workspace.quarantine(**filters, limit=PAGE, **paging)
        self.post_message(PageFetched(table, rows, direction, generation))

    @on(PageFetched)
    def _page_fetched(self, event: PageFetched) -> None:
        table = self.query_one(PagedTable)
        rows = [Row(item.id, self._cells(item), item) for item in event.items]
        table.show_page(rows, event.direction, event.generation)  # type: ignore[arg-type]
        if event.direction == "first" and self._keep is not None:
            keys = [row.key for row in table.rows]
            if self._keep in keys:
                table.cursor = keys.index(self._keep)
            self._keep = None
        self._subtitle()
        if not table.rows:
            self.query_one(QuarantineDetail).show(None)

    @on(QuarantineCounted)
    def _counted(self, event: QuarantineCounted) -> None:
        table = self.query_one(PagedTable)
        if event.generation == table.generation:
            table.total = event.total
            self._subtitle()

    def _subtitle(self) -> None:
        table = self.query_one(PagedTable)
        pane = self.query_one("#q-list")
        marks = f" · {len(table.marks)} marked" if table.marks else ""
        busy = f" · {self.busy}…" if self.busy else ""
        pane.border_subtitle = f"{table.position}{marks}{busy}"

    def _cells(self, row: QuarantinedRecord) -> tuple[Cell, ...]:
        status = Tone(row.status, fmt.STATUS_COLOR.get(row.status, "foreground"))
        return (str(row.id), row.run_id, row.pipeline_name, row.record_id, row.stage, status,
                fmt.one_line(row.reason or "", 200))

    def work_failed(self, group: str, message: str) -> None:
        if group == "page":
            table = self.query_one(PagedTable)
            for direction in ("first", "after", "before", "last"):
                table.page_failed(direction, table.generation)  # type: ignore[arg-type]
        if group == "act":
            message = f"{self.busy or 'the action'} failed: {message}"
            self.busy = None
            self._subtitle()
        super().work_failed(group, message)

    # ------------------------------------------------------------------ detail

    @on(PagedTable.Highlighted, "#q-table")
    def _highlighted(self, event: PagedTable.Highlighted) -> None:
        self._subtitle()
        row = event.row.item if event.row is not None else None
        detail = self.query_one(QuarantineDetail)
        if row is None:
            if event.table.rows == []:
                detail.show(None)
            return
        # Holding a key down scrolls the list; the detail follows once the cursor rests.
        if self._detail_timer is not None:
            self._detail_timer.stop()
        self._detail_timer = self.set_timer(DETAIL_DELAY_S, lambda: self._show_detail(row))

    def _show_detail(self, row: QuarantinedRecord) -> None:
        current = self.query_one(PagedTable).highlighted
        if current is None or current.key != row.id:
            return
        detail = self.query_one(QuarantineDetail)
        detail.show(current.item, None)
        detail.scroll_home(animate=False)
        self.fetch_detail(row.id)

    def restyle(self) -> None:
        super().restyle()
        detail = self.query_one(QuarantineDetail)
        if detail.row is not None:
            detail.show(detail.row, detail.actions)

    @work(exclusive=True, group="detail", exit_on_error=False)
    async def fetch_detail(self, quarantine_id: int) -> None:
        row = await self.workspace.quarantined(quarantine_id)
        if row is not None:
            actions = await self.workspace.quarantine_history(quarantine_id)
            self.post_message(QuarantineDetailFetched(row, actions))

    @on(QuarantineDetailFetched)
    def _detail(self, event: QuarantineDetailFetched) -> None:
        current = self.query_one(PagedTable).highlighted
        if current is not None and current.key == event.record.id:
            self.query_one(QuarantineDetail).show(event.record, event.actions)

    # ------------------------------------------------------------------ actions

    def _chosen(self) -> list[QuarantinedRecord]:
        return self.query_one(PagedTable).chosen()

    def _ready(self) -> list[QuarantinedRecord] | None:
        if self.busy:
            self.notify(f"Still {self.busy}: wait for it to finish.", severity="warning")
            return None
        rows = self._chosen()
        if not rows:
            self.notify("No record here.", severity="warning")
            return None
        return rows

    def action_approve(self) -> None:
        rows = self._ready()
        if rows:
            self._act("approve", rows)

    def action_reprocess(self) -> None:
        rows = self._ready()
        if rows:
            self._act("reprocess", rows)

    def action_discard(self) -> None:
        rows = self._ready()
        if not rows:
            return
        from loom_tui.screens.confirm import ConfirmScreen

        what = f"record #{rows[0].id} ({rows[0].record_id})" if len(rows) == 1 else \
            fmt.plural(len(rows), "marked record")

        def decided(answer: tuple[bool, str | None] | None) -> None:
            if answer and answer[0]:
                self._act("discard", rows, note=answer[1])

        self.app.push_screen(ConfirmScreen(
            "Discard", f"Discard {what}? A discarded record is never loaded.", yes="Discard",
            note=True, danger=True), decided)

    def action_edit(self) -> None:
        if self.busy:
            self.notify(f"Still {self.busy}: wait for it to finish.", severity="warning")
            return
        table = self.query_one(PagedTable)
        row = table.highlighted
        if row is None:
            return
        item: QuarantinedRecord = row.item
        if item.status != "open":
            self.notify(f"#{item.id} is already {item.status}.", severity="warning")
            return
        from loom_tui.screens.edit_output import EditOutputScreen

        def edited(applied: QuarantineActionsApplied | None) -> None:
            if applied is not None:
                self._advance = True
                self._applied(applied)

        self.app.push_screen(EditOutputScreen(item), edited)

    def _act(self, action: str, rows: Sequence[QuarantinedRecord], note: str | None = None) -> None:
        # One record decided (no marks): the cursor goes on to the next, as a reviewer would.
        self._advance = not self.query_one(PagedTable).marks
        self.busy = {"approve": "approving", "reprocess": "reprocessing",
                     "discard": "discarding"}[action] + f" {len(rows)}"
        self._subtitle()
        self.apply_action(action, [row.id for row in rows], note)

    @work(exclusive=True, group="act", exit_on_error=False)
    async def apply_action(self, action: str, ids: list[int], note: str | None) -> None:
        workspace = self.workspace
        if action == "approve":
            results = await workspace.approve(ids, note=note)
        elif action == "reprocess":
            results = await workspace.reprocess(ids)
        else:
            results = await workspace.discard(ids, note=note)
        rows = [row for row in [await workspace.quarantined(i) for i in ids] if row is not None]
        self.post_message(QuarantineActionsApplied(action, results, rows))

    @on(QuarantineActionsApplied)
    def _applied(self, event: QuarantineActionsApplied) -> None:
        self.busy = None
        table = self.query_one(PagedTable)
        for row in event.rows:
            table.update_row(row.id, self._cells(row), row)
        table.clear_marks()
        decided = any(r.loaded or r.status == "discarded" for r in event.results)
        if self._advance and decided:
            table.action_cursor(1)
        self._advance = False
        self._subtitle()
        self._report(event.action, event.results)
        current = table.highlighted
        if current is not None:
            self.fetch_detail(current.item.id)
        self.recount()

    @work(exclusive=True, group="count", exit_on_error=False)
    async def recount(self) -> None:
        table = self.query_one(PagedTable)
        generation = table.generation
        filters = {k: v for k, v in self.filters.items() if v is not None or k == "status"}
        if filters.get("run_id"):
            run = await self.workspace.get_run(filters["run_id"])
            if run is None:
                return
            filters["run_id"] = run.run_id
        self.post_message(QuarantineCounted(await self.workspace.count_quarantine(**filters),
                                            generation))

    def _report(self, action: str, results: Sequence[ActionResult]) -> None:
        """One line: what happened to the records."""
        done = [r for r in results if r.loaded or r.status == "discarded"]
        left = [r for r in results if r not in done]
        if len(results) == 1:
            result = results[0]
            self.notify(markup=False, message=f"#{result.quarantine_id}: {result.message}",
                        severity="information" if result in done else "warning", timeout=6)
            return
        verb = {"approve": "approved", "reprocess": "reprocessed and loaded",
                "discard": "discarded", "edit": "approved"}.get(action, action)
        line = f"{len(done)} {verb}"
        if left:
            line += f"; {len(left)} not: " + fmt.one_line(
                "; ".join(f"#{r.quarantine_id} {r.message}" for r in left[:3]), 200)
        self.notify(markup=False, message=line, severity="warning" if left else "information", timeout=8)

    def action_mark(self) -> None:
        table = self.query_one(PagedTable)
        table.toggle_mark()
        table.action_cursor(1)
        self._subtitle()

    def action_unmark(self) -> None:
        self.query_one(PagedTable).clear_marks()
        self.query_one(PagedTable).focus()
        self._subtitle()

    def action_refresh(self) -> None:
        self.load_pipeline_names()
        self.refresh_data()

    def on_screen_resume(self) -> None:
        if self.resumed_from_elsewhere():
            self.refresh_data()  # a run, a reprocess elsewhere may have changed the list

    def refresh_data(self) -> None:
        """Read the quarantine again, the cursor staying on the same record."""
        table = self.query_one(PagedTable)
        self._keep = table.highlighted.key if table.highlighted is not None else None
        table.reset()

    def action_inspect(self) -> None:
        pane = self.query_one("#q-detail-pane")
        self.query_one(QuarantineDetail).focus()
        self.maximized = pane

    def action_filter(self) -> None:
        self.query_one("#q-pipeline", Select).focus()
