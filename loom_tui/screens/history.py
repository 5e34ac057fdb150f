"""History: every run, newest first, paged from the store by (started_at, run_id), with the
runs of a shard group gathered under one summed line and each run's monitoring alerts; the
highlighted run's pipeline charted (cost and latency across runs) beside its LLM judges'
agreement with reviewers; two marked runs compared; an unfinished run resumed."""

from __future__ import annotations

import dataclasses
import getpass
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Select, Static

from core.api import LoomError, MonitoringAlert, PipelineRun, ShardGroup
from loom_tui import format as fmt
from loom_tui.history_lines import Line, gather, line_key, shown_runs, unacknowledged, worst
from loom_tui.messages import (AlertsAcknowledged, JudgesFetched, PageFetched, PageWanted,
                               RunReleased, RunsCompared, RunsCounted, RunSeriesFetched,
                               RunsRefreshed)
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.judge_panel import JudgePanel
from loom_tui.widgets.paged_table import Cell, Column, PagedTable, Row, Tone
from loom_tui.widgets.run_charts import RunCharts
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.top_bar import TopBar

COLUMNS = (
    Column("run", 24),
    Column("pipeline", None, min_width=10),
    Column("status", 9),
    Column("started", 16, drop=2),
    Column("records", 7, "right", drop=3),
    Column("rejected", 8, "right"),
    Column("cost", 9, "right"),
    Column("duration", 8, "right", drop=5),
    Column("p95", 6, "right", drop=6),
    Column("alerts", 6, "right", drop=4),
)
SEVERITY_COLOR = {"critical": "error", "error": "error", "warning": "warning"}
ALERT_LINES = 3  # alerts listed under the highlighted run; the rest are counted
STATUSES = ("success", "partial", "failed", "cancelled", "running")
PAGE = 100
SERIES = 40
LIVE_S = 2.0  # how often a running run's line is read again


class HistoryScreen(LoomScreen):
    SECTION = "history"
    TITLE = "History"
    HELP = ("Every run, newest first, paged from the store; the runs of a shard group sit "
            "under one line that sums them. The alerts column counts a run's monitoring alerts "
            "(coloured by the worst one not yet acknowledged); the line under the list says "
            "what they are, and a acknowledges them. Below, the highlighted run's pipeline: "
            "cost and p50/p95 latency across its last runs, and how often each of its LLM "
            "judges agreed with the people who approved, edited or discarded the records it "
            "scored: too strict counts records it failed that a person approved, too lenient "
            "records it passed that a person fixed or discarded; under 10 decisions the rate "
            "says little. Mark two runs with space and press c to compare their configuration "
            "(prompt and context versions, model) and results side by side. Enter opens the "
            "run's quarantine. r resumes an unfinished run — one whose process died (a crash, "
            "a kill, a reboot) or that was cancelled or failed with records left: what it "
            "loaded is not loaded again, what the model answered is not asked again. l releases "
            "a held run: a replace run that ended partial kept its destination as it was, and "
            "l publishes the records that passed into it.")
    BINDINGS = [
        Binding("space", "mark", "Mark", tooltip="Mark a run to compare (two)", id="history.mark"),
        Binding("c", "compare", "Compare", tooltip="Compare the two marked runs",
                id="history.compare"),
        Binding("enter", "quarantine", "Quarantine", tooltip="This run's quarantined records",
                id="history.quarantine"),
        Binding("a", "acknowledge", "Acknowledge", tooltip="Acknowledge the highlighted run's "
                "alerts (a group's: all its runs')", id="history.acknowledge"),
        Binding("r", "resume", "Resume", tooltip="Finish the highlighted unfinished run",
                id="history.resume"),
        Binding("l", "release", "Release", tooltip="Publish what the highlighted held run kept "
                "back (replace, ended partial)", id="history.release"),
        Binding("ctrl+r", "refresh", "Refresh", tooltip="Read the history again",
                id="history.refresh"),
        Binding("escape", "unmark", "Clear marks", show=False, id="history.unmark"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filters: dict[str, Any] = {}
        self.charted: str | None = None
        self._pipelines_known: list[str] = []
        # The table's lines by key: what each shows beyond its cells (its alerts) and where
        # it stands in the runs listing (for paging). Only the window's lines are kept.
        self.lines: dict[Hashable, Line] = {}
        self._keep: Hashable | None = None  # the line the cursor goes back to after a refresh

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
        with Horizontal(id="h-bottom"):
            with Vertical(id="h-charts", classes="pane") as charts:
                charts.border_title = "Across runs"
                yield RunCharts(id="h-run-charts")
            with Vertical(id="h-judges", classes="pane") as judges:
                judges.border_title = "Judges"
                judges.border_subtitle = "agreement with reviewers"
                yield JudgePanel(id="h-judge-panel")
        yield LoomFooter()

    def on_mount(self) -> None:
        super().on_mount()
        self.load_pipeline_names()
        self.query_one(PagedTable).focus()
        self.query_one(PagedTable).reset()
        # A run going (here or in another process) changes its line: follow it.
        self.set_interval(LIVE_S, self._follow_running)

    def on_screen_resume(self) -> None:
        self._marks_hint()
        if self.resumed_from_elsewhere():
            self.refresh_data()  # back from a run, a resume, another section: read again

    def refresh_data(self) -> None:
        """Read the history again, the cursor staying on the same run."""
        table = self.query_one(PagedTable)
        self._keep = table.highlighted.key if table.highlighted is not None else None
        self.charted = None
        table.reset()

    def _follow_running(self) -> None:
        running = [row.item.run_id for row in self.query_one(PagedTable).rows
                   if isinstance(row.item, PipelineRun) and row.item.status == "running"]
        if running and self.is_current:
            self.fetch_running(running)

    @work(exclusive=True, group="live", exit_on_error=False)
    async def fetch_running(self, run_ids: list[str]) -> None:
        runs = [run for run in [await self.workspace.get_run(i) for i in run_ids] if run]
        self.post_message(RunsRefreshed(runs))

    @on(RunsRefreshed)
    def _runs_refreshed(self, event: RunsRefreshed) -> None:
        table = self.query_one(PagedTable)
        for run in event.runs:
            line = self.lines.get(run.run_id)
            if line is None or line.item == run:
                continue
            line = self.lines[run.run_id] = dataclasses.replace(line, item=run)
            table.update_row(run.run_id, self._cells(line), run)
            if run.status != "running" and run.pipeline_name == self.charted:
                self.charted = None  # a run ended: its point joins the charts
                highlighted = table.highlighted
                if highlighted is not None:
                    self._highlighted(PagedTable.Highlighted(table, highlighted))

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
        paging: dict[str, Any] = {}
        line = self.lines.get(line_key(event.anchor)) if event.anchor is not None else None
        # The table lists newest first: "after" in the table is older in time.
        if event.direction == "after" and line is not None:
            paging["before"] = line.oldest
        elif event.direction == "before" and line is not None:
            paging["after"] = line.newest
        elif event.direction == "last":
            paging["oldest"] = True
        self.fetch_page(dict(self.filters), paging, event.direction, event.generation)

    @work(group="page", exit_on_error=False)
    async def fetch_page(self, filters: dict[str, Any], paging: dict[str, Any], direction: str,
                         generation: int) -> None:
        table = self.query_one(PagedTable)
        workspace = self.workspace
        runs = await workspace.runs(pipeline=filters.get("pipeline"),
                                    status=filters.get("status"), limit=PAGE, **paging)
        groups = await workspace.shard_groups(runs)
        alerts = await workspace.run_alerts(shown_runs(runs, groups))
        self.post_message(PageFetched(table, gather(runs, groups, alerts), direction, generation,
                                      more=len(runs) >= PAGE))
        if direction == "first":
            total = await workspace.count_history(pipeline=filters.get("pipeline"),
                                                  status=filters.get("status"))
            self.post_message(RunsCounted(total, generation))

    @on(PageFetched)
    def _page_fetched(self, event: PageFetched) -> None:
        table = self.query_one(PagedTable)
        if event.generation != table.generation:
            return
        lines: list[Line] = event.items
        if event.direction in ("first", "last"):
            self.lines.clear()
        shown = set() if event.direction in ("first", "last") else {row.key for row in table.rows}
        # A line the window already shows (a group met on an earlier page) stays as it is.
        fresh = [line for line in lines if line.key not in shown]
        self.lines.update((line.key, line) for line in fresh)
        rows = [Row(line.key, self._cells(line), line.item) for line in fresh]
        table.show_page(rows, event.direction, event.generation,  # type: ignore[arg-type]
                        more=event.more)
        if event.direction == "first" and self._keep is not None:
            keys = [row.key for row in table.rows]
            if self._keep in keys:
                table.cursor = keys.index(self._keep)
            self._keep = None
        if lines and table.rows:
            # Every run of the page is on screen now, new or not: the window's edge stands
            # for the page up to its end, else a page of runs already shown (a big group's)
            # would be asked for again and again.
            if event.direction in ("first", "after", "last"):
                edge = self.lines[table.rows[-1].key]
                self.lines[edge.key] = edge.widened(oldest=lines[-1].oldest)
            if event.direction in ("before", "last"):
                edge = self.lines[table.rows[0].key]
                self.lines[edge.key] = edge.widened(newest=lines[0].newest)
        if len(self.lines) > 2 * table.window_size:
            keys = {row.key for row in table.rows}
            self.lines = {key: line for key, line in self.lines.items() if key in keys}
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

    def _cells(self, line: Line) -> tuple[Cell, ...]:
        item = line.item
        alerts = self._alert_cell(line.alerts)
        if isinstance(item, ShardGroup):
            name = Text(f"▣ {_clip_middle(item.group, 22)}", style="bold")
            status = Tone(item.status, fmt.STATUS_COLOR.get(item.status, "foreground"))
            return (name, Text(item.pipeline, style="bold"), status, fmt.when(item.started_at),
                    fmt.count(item.total("extracted")),
                    fmt.percent(fmt.rejection(item.total("loaded"), item.total("quarantined"))),
                    fmt.money(item.cost_usd), fmt.duration(item.duration_s), "–", alerts)
        run: PipelineRun = item
        status = Tone(run.status, fmt.STATUS_COLOR.get(run.status, "foreground"))
        label: Cell = run.run_id
        pipeline: Cell = run.pipeline_name
        if line.shard:
            label = f"{line.shard} {run.run_id}"
            shard = f"{run.shard_index}/{run.shard_count}"
            pipeline = Tone(f"{shard} retried" if line.retried else f"shard {shard}", "dim")
        return (label, pipeline, status, fmt.when(run.started_at), fmt.count(run.extracted),
                fmt.percent(fmt.rejection(run.loaded, run.quarantined)), fmt.money(run.cost_usd),
                fmt.duration(run.duration_s), fmt.latency(run.latency_p95_s), alerts)

    @staticmethod
    def _alert_cell(alerts: Sequence[MonitoringAlert]) -> Cell:
        if not alerts:
            return Tone("–", "dim")
        open_ = unacknowledged(alerts)
        if not open_:
            return Tone(f"{len(alerts)} ✓", "dim")  # all acknowledged: seen, nothing to do
        return Tone(str(len(alerts)), SEVERITY_COLOR.get(worst(open_) or "", "warning"))

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
        item = event.row.item if event.row is not None else None
        detail = self.query_one("#h-run-detail", Static)
        if item is None:
            detail.update("")
            return
        detail.update(self._detail(item))
        self.refresh_bindings()  # Resume shows for an unfinished run only
        pipeline = item.pipeline if isinstance(item, ShardGroup) else item.pipeline_name
        if pipeline != self.charted:
            self.charted = pipeline
            self.query_one("#h-judges").border_title = f"Judges · {escape(pipeline)}"
            self.fetch_series(pipeline)
            self.fetch_judges(pipeline)

    def restyle(self) -> None:
        super().restyle()
        table = self.query_one(PagedTable)
        row = table.highlighted
        if row is not None:
            self.query_one("#h-run-detail", Static).update(self._detail(row.item))
        self.query_one(JudgePanel).redraw()

    def _detail(self, item: PipelineRun | ShardGroup) -> Group:
        colors = self.app.theme_variables
        text = Text(no_wrap=True, overflow="ellipsis")
        shown = self.lines.get(line_key(item))
        if isinstance(item, ShardGroup):
            runs = list(item.runs)
            ran = item.shard_count - len(item.missing)
            retried = len(runs) - len(item.counted)
            text.append(f"shard group {item.group}", "bold")
            text.append(f" · {ran} of {item.shard_count} shards ran", "dim")
            if item.missing:
                text.append(f" (waiting for {', '.join(map(str, item.missing))})",
                            colors.get("warning", ""))
            if retried:
                text.append(f" · {fmt.plural(retried, 'retry', 'retries')}", "dim")
            text.append(f" · {fmt.count(item.total('loaded'))} loaded, "
                        f"{fmt.count(item.total('quarantined'))} quarantined, "
                        f"{fmt.count(item.total('skipped'))} skipped", "dim")
            text.append(f" · {item.total('input_tokens'):,}→{item.total('output_tokens'):,} "
                        "tokens", "dim")
            if item.total("cache_read_tokens"):
                text.append(f" ({item.total('cache_read_tokens'):,} cache read)", "dim")
        else:
            run = item
            text.append(f"{run.provider}:{run.model}", "bold")
            text.append(f" · prompt {fmt.short_hash(run.prompt_hash)}", "dim")
            text.append(f" · {fmt.count(run.loaded)} loaded, {fmt.count(run.quarantined)} "
                        f"quarantined, {fmt.count(run.skipped)} skipped", "dim")
            text.append(f" · {run.input_tokens:,}→{run.output_tokens:,} tokens", "dim")
            cached = [f"{n:,} {what}" for n, what in ((run.cache_read_tokens, "cache read"),
                                                      (run.cache_write_tokens, "written")) if n]
            if cached:
                text.append(f" ({', '.join(cached)})", "dim")
            saved = sum((run.savings_usd or {}).values())
            if run.savings_usd:
                text.append(f" · {fmt.money(abs(saved))} {'saved' if saved >= 0 else 'more'} "
                            "by caching", "dim")
            text.append(f" · p50 {fmt.latency(run.latency_p50_s)}", "dim")
            if run.shard_group is not None:
                text.append(f" · shard {run.shard_index}/{run.shard_count} of "
                            f"{run.shard_group}", "dim")
                if shown is not None and shown.retried:
                    text.append(f" · retried: a newer run of shard {run.shard_index} counts "
                                "in the group's totals", colors.get("warning", ""))
            reason = run.status_reason or run.error_message
            if reason:
                text.append(f" · {fmt.one_line(reason, 160)}",
                            colors.get(fmt.STATUS_COLOR.get(run.status, ""), ""))
            if run.commit_state == "held":
                text.append(" · held: its destination is unchanged, l releases its passing "
                            "records", colors.get("warning", ""))
            elif self.workspace.resume_problem(run) is None:
                gone = " (its process is gone)" if run.status == "running" else ""
                text.append(f" · unfinished{gone}: r resumes it", colors.get("warning", ""))
        return Group(text, *self._alert_lines(shown.alerts if shown is not None else ()))

    def _alert_lines(self, alerts: Sequence[MonitoringAlert]) -> list[Text]:
        colors = self.app.theme_variables
        ordered = sorted(alerts, key=lambda a: a.acknowledged)  # the ones to look at first
        lines = []
        for alert in ordered[:ALERT_LINES]:
            color = colors.get(SEVERITY_COLOR.get(alert.severity, "warning"), "")
            line = Text(no_wrap=True, overflow="ellipsis")
            if alert.acknowledged:
                line.append(f"✓ {alert.alert_type}: {fmt.one_line(alert.message, 200)}", "dim")
                by = f" by {alert.acknowledged_by}" if alert.acknowledged_by else ""
                line.append(f" (acknowledged{by})", "dim italic")
            else:
                line.append(f"▲ {alert.severity} ", f"bold {color}")
                line.append(f"{alert.alert_type}: ", color)
                line.append(fmt.one_line(alert.message, 200))
            lines.append(line)
        if len(ordered) > ALERT_LINES:
            lines.append(Text(f"  … and {len(ordered) - ALERT_LINES} more", style="dim"))
        return lines

    @work(exclusive=True, group="series", exit_on_error=False)
    async def fetch_series(self, pipeline: str) -> None:
        self.post_message(RunSeriesFetched(pipeline, await self.workspace.run_series(
            pipeline, limit=SERIES)))

    @on(RunSeriesFetched)
    def _series(self, event: RunSeriesFetched) -> None:
        if event.pipeline == self.charted:
            self.query_one(RunCharts).show(event.pipeline, event.points)

    @work(exclusive=True, group="judges", exit_on_error=False)
    async def fetch_judges(self, pipeline: str) -> None:
        self.post_message(JudgesFetched(pipeline, await self.workspace.judge_agreement(pipeline)))

    @on(JudgesFetched)
    def _judges(self, event: JudgesFetched) -> None:
        if event.pipeline == self.charted:
            self.query_one(JudgePanel).show(event.pipeline, event.agreements)

    # ------------------------------------------------------------------ alerts

    def action_acknowledge(self) -> None:
        row = self.query_one(PagedTable).highlighted
        line = self.lines.get(row.key) if row is not None else None
        if line is None:
            return
        waiting = unacknowledged(line.alerts)
        if not waiting:
            self.notify("No alert to acknowledge on this line.", severity="warning")
            return
        self.acknowledge([a.id for a in waiting if a.id is not None],
                         sorted({a.run_id for a in waiting if a.run_id is not None}))

    @work(exclusive=True, group="acknowledge", exit_on_error=False)
    async def acknowledge(self, alert_ids: list[int], run_ids: list[str]) -> None:
        by = _who()
        for alert_id in alert_ids:
            await self.workspace.acknowledge_alert(alert_id, by=by)
        self.post_message(AlertsAcknowledged(await self.workspace.run_alerts(run_ids),
                                             len(alert_ids)))

    @on(AlertsAcknowledged)
    def _acknowledged(self, event: AlertsAcknowledged) -> None:
        table = self.query_one(PagedTable)
        changed = set(event.alerts)
        for key, line in list(self.lines.items()):
            if changed & {run.run_id for run in line.runs()}:
                line = self.lines[key] = line.with_alerts(event.alerts)
                table.update_row(key, self._cells(line), line.item)
        self.notify(f"Acknowledged {fmt.plural(event.count, 'alert')}.", timeout=4)

    # ------------------------------------------------------------------ actions

    def action_mark(self) -> None:
        table = self.query_one(PagedTable)
        row = table.highlighted
        if row is not None and isinstance(row.item, ShardGroup):
            self.notify("Mark one of the group's runs: a comparison is of two runs.",
                        severity="warning")
            return
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
        if row is None:
            return
        if isinstance(row.item, ShardGroup):
            self.notify("A shard group: enter on one of its runs opens that run's quarantine.",
                        severity="warning")
            return
        await self.loom.show_quarantine(run_id=row.item.run_id)

    # ------------------------------------------------------------------ resuming

    def _resumable(self) -> PipelineRun | None:
        tables = self.query(PagedTable)
        row = tables.first().highlighted if tables else None
        item = row.item if row is not None else None
        if isinstance(item, ShardGroup) or item is None:
            return None
        return item if self.workspace.resume_problem(item) is None else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "resume":
            return self._resumable() is not None  # shown for an unfinished run only
        if action == "release":
            tables = self.query(PagedTable)
            row = tables.first().highlighted if tables else None
            return getattr(row.item if row is not None else None, "commit_state", None) == "held"
        return True

    def action_resume(self) -> None:
        row = self.query_one(PagedTable).highlighted
        item = row.item if row is not None else None
        if item is None or isinstance(item, ShardGroup):
            return
        problem = self.workspace.resume_problem(item)
        if problem is not None:
            self.notify(markup=False, message=problem, severity="warning")
            return
        path = Path(item.pipeline_path) if item.pipeline_path else None
        if path is None or not path.exists():
            self.notify(markup=False, message=f"Run {item.run_id}'s pipeline file {item.pipeline_path} is not there "
                        "any more: it cannot be resumed from here.", severity="error")
            return
        self.loom.resume_run(path, item.run_id)

    # ------------------------------------------------------------------ releasing

    def action_release(self) -> None:
        row = self.query_one(PagedTable).highlighted
        item = row.item if row is not None else None
        if item is None or isinstance(item, ShardGroup):
            return
        if item.commit_state != "held":
            self.notify(f"Run {item.run_id} holds nothing back: there is nothing to release.",
                        severity="warning")
            return
        self.release(item.run_id)

    @work(exclusive=True, group="release", exit_on_error=False)
    async def release(self, run_id: str) -> None:
        try:
            result = await self.workspace.release(run_id)
        except LoomError as exc:
            self.post_message(RunReleased(str(exc), error=True))
            return
        self.post_message(RunReleased(result.message))

    @on(RunReleased)
    def _released(self, event: RunReleased) -> None:
        self.notify(event.message, severity="error" if event.error else "information",
                    markup=False)
        if not event.error:
            self.query_one(PagedTable).reset()

    def action_refresh(self) -> None:
        self.load_pipeline_names()
        self.refresh_data()


def _clip_middle(text: str, width: int) -> str:
    """Long group ids keep their head and tail (an Airflow group id ends with its run's date)."""
    if len(text) <= width:
        return text
    tail = width * 2 // 3
    return f"{text[:width - tail - 1]}…{text[-tail:]}"


def _who() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return None
