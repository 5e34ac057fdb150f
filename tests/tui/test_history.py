"""The History screen: runs paged from the store, charts per pipeline, two runs compared."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from textual.widgets import Select
from textual_plotext import PlotextPlot

from core.events import RunSummary
from core.store import RunStart, Store
from loom_tui.app import LoomApp
from loom_tui.screens.compare import CompareScreen
from loom_tui.screens.history import HistoryScreen
from loom_tui.screens.quarantine import QuarantineScreen
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.run_charts import RunCharts
from tests.tui.conftest import SIZE, text_of, wait_for
from tests.tui.data import RUNS, T0, run_id, seed_history


async def open_history(app: LoomApp, pilot, count: int) -> HistoryScreen:
    await pilot.press("f4")
    await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
    table = app.screen.query_one(PagedTable)
    await wait_for(pilot, lambda: table.total == count and len(table.rows) == min(count, 100),
                   what=f"{count} runs")
    return app.screen  # type: ignore[return-value]


async def test_runs_newest_first_with_charts_of_the_pipeline(tmp_path: Path) -> None:
    async with await Store.open() as store:
        ids = await seed_history(store)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, len(RUNS))
        table = screen.query_one(PagedTable)
        assert [row.key for row in table.rows] == list(reversed(ids))
        newest = table.rows[0].cells
        assert [str(c) for c in newest[:4]] == [ids[-1], "customer_sentiment", "success",
                                                "2026-03-02 17:00"]
        assert [str(c) for c in newest[4:]] == ["40", "12.5%", "$0.002100", "12.0 s", "420 ms",
                                                "950 ms"]
        charts = screen.query_one(RunCharts)
        await wait_for(pilot, lambda: screen.charted == "customer_sentiment"
                       and charts.query_one("#cost-chart", PlotextPlot).display,
                       what="the pipeline's charts")
        # Another pipeline's run: its own charts.
        table.cursor = 1
        await wait_for(pilot, lambda: screen.charted == "ticket_triage", what="ticket_triage")
        assert "provider" not in text_of(screen.query_one("#h-run-detail"))
        failed = [i for i, row in enumerate(table.rows) if row.item.status == "failed"][0]
        table.cursor = failed
        await pilot.pause()
        assert "invalid API key" in text_of(screen.query_one("#h-run-detail"))


async def test_compare_two_marked_runs(tmp_path: Path) -> None:
    async with await Store.open() as store:
        ids = await seed_history(store)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, len(RUNS))
        await pilot.press("c")  # nothing marked: it says what to do
        assert any("Mark exactly two runs" in n.message for n in app._notifications)
        table = screen.query_one(PagedTable)
        # The newest customer_sentiment run (prompt v2) and the first one (prompt v1).
        table.cursor = 0
        await pilot.press("space")
        table.cursor = len(ids) - 1
        await pilot.press("space", "c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="the comparison")
        comparison = app.screen.comparison
        assert (comparison.run_a.run_id, comparison.run_b.run_id) == (ids[0], ids[-1])
        config = {row.label: row for row in comparison.config}
        assert config["prompt"].differs and config["temperature"].differs
        assert not config["model"].differs
        diff = text_of(app.screen.query_one("#compare-diff-text"))
        assert "+Classify the review by sentiment" in diff
        await pilot.press("escape")
        assert app.screen is screen


async def test_filter_and_open_a_runs_quarantine(tmp_path: Path) -> None:
    async with await Store.open() as store:
        ids = await seed_history(store)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, len(RUNS))
        table = screen.query_one(PagedTable)
        screen.query_one("#h-status", Select).value = "partial"
        await wait_for(pilot, lambda: table.total == 1 and len(table.rows) == 1, what="partial")
        assert table.rows[0].key == ids[2]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, QuarantineScreen), what="quarantine")
        quarantine = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: quarantine.total == 4, what="the run's quarantined records")
        assert {row.item.run_id for row in quarantine.rows} == {ids[2]}


async def test_history_pages_through_many_runs(tmp_path: Path) -> None:
    async with await Store.open() as store:
        for n in range(450):
            rid = f"{(T0 + timedelta(minutes=n)):%Y%m%d-%H%M%S}-{n:06x}"
            await store.start_run(RunStart(
                run_id=rid, pipeline="many", pipeline_version="1", pipeline_path="/x.yaml",
                started_at=T0 + timedelta(minutes=n), config={}, model="m", provider="openai",
                prompt_hash="h", system_hash=None, context_hashes={}, params={}, options={},
                source="csv://x.csv", destination="jsonl://y.jsonl"))
            await store.finish_run(RunSummary(
                run_id=rid, pipeline="many", status="success", status_reason=None, extracted=1,
                loaded=1, quarantined=0, skipped=0, cost_usd=0.001, cost_by_stage={},
                cost_by_model={}, input_tokens=1, output_tokens=1, llm_calls=1, cache_hits=0,
                duration_s=1.0, latency_p50_s=0.1, latency_p95_s=0.2, latency_p99_s=0.3), [])
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, 450)
        table = screen.query_one(PagedTable)
        while table.window_start + table.cursor < 440:
            table.action_page(1)
            await pilot.pause()
        await wait_for(pilot, lambda: not table._pending, what="paging")
        keys = [row.key for row in table.rows]
        assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
        assert len(keys) <= table.window_size
        await pilot.press("end")
        await wait_for(pilot, lambda: table.highlighted.key.endswith("-000000"), what="oldest")


def test_run_ids_in_the_seed_are_sortable() -> None:
    assert run_id(0) < run_id(1) < run_id(len(RUNS) - 1)
