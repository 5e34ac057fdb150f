"""The History screen: runs paged from the store, charts per pipeline, two runs compared."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from textual.widgets import Select
from textual_plotext import PlotextPlot

from core.api import JudgeAgreement
from core.events import RunSummary
from core.store import RunStart, Store
from loom_tui.app import LoomApp
from loom_tui.screens.compare import CompareScreen
from loom_tui.screens.history import HistoryScreen
from loom_tui.screens.quarantine import QuarantineScreen
from loom_tui.widgets.judge_panel import JudgePanel, verdict
from loom_tui.widgets.paged_table import PagedTable, Tone
from loom_tui.widgets.run_charts import RunCharts
from tests.tui.conftest import SIZE, text_of, wait_for
from tests.tui.data import GROUP, RUNS, SHARDS, T0, run_id, seed_everything, seed_history


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
        assert [str(c) for c in newest[4:]] == ["40", "12.5%", "$0.002100", "12.0 s", "950 ms",
                                                "–"]
        assert "p50 420 ms" in text_of(screen.query_one("#h-run-detail"), 300)
        charts = screen.query_one(RunCharts)
        await wait_for(pilot, lambda: screen.charted == "customer_sentiment"
                       and charts.query_one("#cost-chart", PlotextPlot).display,
                       what="the pipeline's charts")
        # Another pipeline's run: its own charts.
        table.cursor = 1
        await wait_for(pilot, lambda: screen.charted == "ticket_triage", what="ticket_triage")
        assert "provider" not in text_of(screen.query_one("#h-run-detail"), 300)
        failed = [i for i, row in enumerate(table.rows) if row.item.status == "failed"][0]
        table.cursor = failed
        await pilot.pause()
        assert "invalid API key" in text_of(screen.query_one("#h-run-detail"), 300)


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


# ---------------------------------------------------------------- shard groups, alerts, judges


async def test_a_shard_group_is_one_summed_line_with_its_runs_beneath(tmp_path: Path) -> None:
    ids, shard_ids = await seed_everything()
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, len(RUNS) + len(SHARDS) + 1)
        table = screen.query_one(PagedTable)
        keys = [row.key for row in table.rows]
        assert keys[0] == ("group", "customer_sentiment", GROUP)
        # Shards by index; the failed attempt of shard 2 before its retry.
        assert keys[1:6] == [shard_ids[0], shard_ids[1], shard_ids[2], shard_ids[4], shard_ids[3]]
        assert keys[6:] == list(reversed(ids))
        group = [str(c) for c in table.rows[0].cells]
        # The newest run of each shard, summed: 40 + 40 + 40 (the retry) + 40 records.
        assert group[:5] == [f"▣ {GROUP}", "customer_sentiment", "success", "2026-03-02 19:00",
                             "160"]
        assert group[6:9] == ["$0.008600", "30m 15s", "–"]
        shards = [(str(row.cells[0]), str(row.cells[1])) for row in table.rows[1:6]]
        assert shards == [(f"├ {shard_ids[0]}", "shard 0/4"), (f"├ {shard_ids[1]}", "shard 1/4"),
                          (f"├ {shard_ids[2]}", "2/4 retried"), (f"├ {shard_ids[4]}", "shard 2/4"),
                          (f"└ {shard_ids[3]}", "shard 3/4")]
        detail = text_of(screen.query_one("#h-run-detail"), 300)
        assert f"shard group {GROUP} · 4 of 4 shards ran · 1 retry" in detail
        # The failed attempt of shard 2 (12 skipped) is not counted: its retry is.
        assert "146 loaded, 14 quarantined, 0 skipped" in " ".join(detail.split())
        table.cursor = 3
        await pilot.pause()
        assert "retried: a newer run of shard 2 counts" in " ".join(
            text_of(screen.query_one("#h-run-detail"), 300).split())
        # A group is not a run: it cannot be marked for a comparison, nor opened.
        table.cursor = 0
        await pilot.press("space")
        assert not table.marks
        await pilot.press("enter")
        assert app.screen is screen
        # One of its runs opens its own quarantine.
        table.cursor = 5
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, QuarantineScreen), what="quarantine")
        quarantine = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: quarantine.total == 2, what="the shard's records")
        assert {row.item.run_id for row in quarantine.rows} == {shard_ids[3]}


async def test_alerts_are_counted_listed_and_acknowledged(tmp_path: Path) -> None:
    ids, shard_ids = await seed_everything()
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, len(RUNS) + len(SHARDS) + 1)
        table = screen.query_one(PagedTable)
        cells = {row.key: row.cells[-1] for row in table.rows}
        assert cells[ids[2]] == Tone("2", "error")  # an error and a warning, the worst shows
        assert cells[ids[8]] == Tone("1", "warning")
        assert cells[ids[7]] == Tone("1 ✓", "dim")  # acknowledged already
        assert cells[ids[0]] == Tone("–", "dim")
        assert cells[("group", "customer_sentiment", GROUP)] == Tone("1", "warning")
        assert cells[shard_ids[4]] == Tone("1", "warning")

        table.cursor = [row.key for row in table.rows].index(ids[2])
        await pilot.pause()
        detail = text_of(screen.query_one("#h-run-detail"), 300)
        assert "▲ error rejection_rate: rejection rate 30.0% is above max_rejection_rate" in detail
        assert "▲ warning score_degradation: matches_truth: mean score 0.700" in detail

        await pilot.press("a")
        await wait_for(pilot, lambda: table.rows[table.cursor].cells[-1] == Tone("2 ✓", "dim"),
                       what="acknowledged")
        detail = text_of(screen.query_one("#h-run-detail"), 300)
        assert "✓ rejection_rate" in detail and "(acknowledged by " in detail
        await pilot.press("a")
        assert any("No alert to acknowledge" in n.message for n in app._notifications)

        # Acknowledging on a group's line acknowledges its runs' alerts; both lines show it.
        table.cursor = 0
        await pilot.press("a")
        await wait_for(pilot, lambda: table.rows[0].cells[-1] == Tone("1 ✓", "dim"),
                       what="the group's alert acknowledged")
        assert table.rows[4].cells[-1] == Tone("1 ✓", "dim")
    async with await Store.open() as store:
        assert await store.list_alerts(unacknowledged=True) == [
            a for a in await store.list_alerts() if a.run_id == ids[8]]


async def test_the_judges_panel_says_whether_each_judge_can_be_trusted(tmp_path: Path) -> None:
    ids, _ = await seed_everything()
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, len(RUNS) + len(SHARDS) + 1)
        panel = screen.query_one(JudgePanel)
        await wait_for(pilot, lambda: panel.pipeline == "customer_sentiment", what="judges")
        by_name = {a.evaluator: a for a in panel.agreements}
        assert (by_name["judged"].decisions, by_name["judged"].agreed) == (10, 9)
        shown = " ".join(text_of(panel.query_one("#judges-text")).split())
        assert "judged custom_criteria" in shown and "90% 9 of 10 agreed" in shown
        assert "✓ agrees with reviewers" in shown
        assert "grounded groundedness" in shown and "✗ often overruled; too strict" in shown
        assert str(screen.query_one("#h-judges").border_title) == "Judges · customer_sentiment"
        # Another pipeline: no reviewed decisions yet.
        table = screen.query_one(PagedTable)
        table.cursor = [row.key for row in table.rows].index(ids[7])
        await wait_for(pilot, lambda: panel.pipeline == "ticket_triage", what="ticket_triage")
        assert "No reviewed decisions for ticket_triage" in " ".join(
            text_of(panel.query_one("#judges-text")).split())


def test_what_the_judges_panel_makes_of_a_rate() -> None:
    def said(decisions: int, agreed: int, strict: int, lenient: int) -> str:
        return verdict(JudgeAgreement("p", "j", "custom_criteria", decisions, agreed, strict,
                                      lenient))[0]

    assert said(3, 3, 0, 0).startswith("· too few decisions")  # 100% of 3 says little
    assert said(20, 19, 1, 0) == "✓ agrees with reviewers"
    assert said(20, 16, 3, 1) == "~ mostly agrees; too strict"
    assert said(20, 10, 2, 8) == "✗ often overruled; too lenient"


async def test_history_pages_through_a_shard_group_bigger_than_a_page(tmp_path: Path) -> None:
    """250 shards spread over the time of 150 other runs: paging by keyset still shows every
    run once, the group once with all its shards, and ends."""
    from core.sharding import Shard

    async with await Store.open() as store:
        for n in range(400):
            shard = n % 8 == 3 or n >= 200  # 250 shards, interleaved with the other runs
            rid = f"{(T0 + timedelta(minutes=n)):%Y%m%d-%H%M%S}-{n:06x}"
            await store.start_run(RunStart(
                run_id=rid, pipeline="many", pipeline_version="1", pipeline_path="/x.yaml",
                started_at=T0 + timedelta(minutes=n), config={}, model="m", provider="openai",
                prompt_hash="h", system_hash=None, context_hashes={}, params={}, options={},
                source="csv://x.csv", destination="jsonl://y.jsonl",
                shard=Shard(n, 400, "big") if shard else None))
        shards = [f"{(T0 + timedelta(minutes=n)):%Y%m%d-%H%M%S}-{n:06x}" for n in range(400)
                  if n % 8 == 3 or n >= 200]
    assert len(shards) == 225
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: table.total == 401, what="401 lines")
        seen: list = []
        while True:
            await wait_for(pilot, lambda: not table.waiting, what="a page")
            seen.extend(row.key for row in table.rows[table.cursor:] if row.key not in seen)
            if table.window_start + len(table.rows) >= 401 and table.cursor == len(table.rows) - 1:
                break
            table.action_page(1)
            await pilot.pause()
        assert len(seen) == 401 and len(set(seen)) == 401
        assert seen[0] == ("group", "many", "big") and sorted(seen[1:226]) == sorted(shards)
        others = [key for key in seen[226:]]
        assert others == sorted(others, reverse=True)


async def test_a_group_cut_by_the_window_gets_its_line_back_when_paging_up(tmp_path: Path) -> None:
    """600 runs; a group of 40 shards among the first 120. Paging down, the window (400 lines)
    drops the group's line but keeps some of its runs; paging back up brings the line back,
    above all its runs, once."""
    from core.sharding import Shard

    members = [*range(70, 90), *range(100, 120)]  # positions, newest first
    async with await Store.open() as store:
        for i in range(600):
            at = T0 + timedelta(minutes=1000 - i)
            shard = Shard(members.index(i), 40, "cut") if i in members else None
            await store.start_run(RunStart(
                run_id=f"{at:%Y%m%d-%H%M%S}-{i:06x}", pipeline="many", pipeline_version="1",
                pipeline_path="/x.yaml", started_at=at, config={}, model="m",
                provider="openai", prompt_hash="h", system_hash=None, context_hashes={},
                params={}, options={}, source="csv://x.csv", destination="jsonl://y.jsonl",
                shard=shard))
    group = ("group", "many", "cut")
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: table.total == 601, what="601 lines")

        def keys() -> list:
            return [row.key for row in table.rows]

        ours = {f"{i:06x}" for i in members}
        cut = False
        while not cut and table.window_start + len(table.rows) < 601:
            table.action_page(1)
            await wait_for(pilot, lambda: not table.waiting, what="a page")
            shards = [k for k in keys() if isinstance(k, str) and k[-6:] in ours]
            cut = group not in keys() and 0 < len(shards) < 40
        assert cut, "the window never cut the group: the test shows nothing"
        assert keys()[0][-6:] in ours  # the window starts with some of the group's runs
        while table.window_start > 0 or table.cursor > 0:
            table.action_page(-1)
            await wait_for(pilot, lambda: not table.waiting, what="a page")
        await wait_for(pilot, lambda: not table.waiting, what="the top")
        top = keys()
        assert top.count(group) == 1 and len(top) == len(set(top))
        at = top.index(group)
        shards = top[at + 1:at + 41]
        assert sorted(k[-6:] for k in shards) == sorted(f"{i:06x}" for i in members)


async def test_an_unfinished_run_is_resumed_from_history(tmp_path: Path, llm_server) -> None:
    from core.api import Workspace
    from core.engine import RunController, RunOptions
    from core.events import Progress, RunFinished
    from loom_tui.screens.run import RunScreen
    from tests.pipelines import reply, write_pipeline

    llm_server.latency_s = 0.02
    labels = ["positive", "negative", "neutral"]
    rows = [{"id": f"r{i:03d}", "text": f"review {i}", "expected": labels[i % 3],
             "reply": reply(labels[i % 3])} for i in range(200)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          transform={"concurrency": 2, "cache": False})
    controller = RunController()
    async with Workspace(tmp_path) as workspace:
        async for event in workspace.run(workspace.load(path), RunOptions(),
                                         controller=controller):
            if isinstance(event, Progress) and event.transformed >= 20:
                controller.cancel()
            if isinstance(event, RunFinished):
                cancelled = event.summary
    assert cancelled.status == "cancelled" and cancelled.skipped > 0
    calls = llm_server.count

    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, 1)
        assert "unfinished: r resumes it" in text_of(screen.query_one("#h-run-detail"), 300)
        assert screen.check_action("resume", ()) is True
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        run_screen = app.screen
        await wait_for(pilot, lambda: run_screen.summary is not None, what="the resumed run's end",
                       timeout=60)
        summary = run_screen.summary
        assert (summary.run_id, summary.status, summary.loaded) == (cancelled.run_id, "success", 200)
        assert run_screen.resumed is not None and run_screen.resumed.attempt == 2
        assert run_screen.resumed.loaded == cancelled.loaded
        head = text_of(run_screen.query_one("#run-head"), 200)
        assert f"resumed (attempt 2): {cancelled.loaded} loaded" in head
        assert llm_server.count - calls == 200 - cancelled.loaded - cancelled.quarantined

        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="history again")
        await pilot.press("ctrl+r")
        table = screen.query_one(PagedTable)
        await wait_for(pilot, lambda: table.rows and table.rows[0].item.status == "success",
                       what="the run finished in the history")
        assert screen.check_action("resume", ()) is False
        await pilot.press("r")  # nothing to resume: the key does nothing
        assert app.screen is screen


async def test_a_held_run_is_released_from_history(tmp_path: Path, llm_server) -> None:
    from core.api import Workspace
    from core.engine import RunOptions
    from tests.pipelines import read_jsonl, reply, write_pipeline

    labels = ["positive", "negative", "neutral"]
    rows = [{"id": f"r{i:03d}", "text": f"review {i}", "expected": labels[i % 3],
             "reply": reply(labels[(i + 1) % 3] if i % 2 else labels[i % 3])} for i in range(10)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          evaluate={"max_rejection_rate": 0.1},
                          load={"destination": "jsonl://out/results.jsonl", "mode": "replace"})
    async with Workspace(tmp_path) as workspace:
        held = await workspace.run_to_end(workspace.load(path), RunOptions())
    assert held.status == "partial" and held.extra["held"] == 5
    destination = tmp_path / "p" / "out" / "results.jsonl"
    assert not destination.exists()

    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_history(app, pilot, 1)
        assert "held: its destination is unchanged" in text_of(
            screen.query_one("#h-run-detail"), 300)
        assert screen.check_action("release", ()) is True
        await pilot.press("l")
        table = screen.query_one(PagedTable)
        await wait_for(pilot, lambda: table.rows and table.rows[0].item.commit_state == "released",
                       what="the run released")
        assert len(read_jsonl(destination)) == 5
        assert screen.check_action("release", ()) is False
