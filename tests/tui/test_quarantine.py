"""The Quarantine screen: filter, inspect, approve, edit then approve, reprocess, discard — the
store and the destination change — and paging from the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Select, TextArea

from core.api import Workspace
from core.records import Outcome, Stage
from core.store import RunStart, Store
from loom_tui.app import LoomApp
from loom_tui.screens.confirm import ConfirmScreen
from loom_tui.screens.edit_output import EditOutputScreen
from loom_tui.screens.quarantine import QuarantineScreen
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.quarantine_detail import QuarantineDetail
from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.tui.conftest import SIZE, text_of, wait_for
from tests.tui.data import T0, quarantined_result, REVIEWS


def rows(count: int) -> list[dict[str, str]]:
    # Every third record's answer disagrees with the truth: quarantined at evaluate.
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 3 == 0 else "positive")} for i in range(count)]


@pytest.fixture
async def quarantined(tmp_path: Path, llm_server):
    path = write_pipeline(tmp_path / "p", rows=rows(9), base_url=llm_server.base_url,
                          load={"destination": "jsonl://out/results.jsonl", "mode": "replace"})
    async with Workspace(tmp_path) as workspace:
        summary = await workspace.run_to_end(workspace.load(path))
    assert summary.quarantined == 3
    return path, summary.run_id


def destination(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl(path.parent / "out" / "results.jsonl")}


async def open_quarantine(app: LoomApp, pilot, count: int) -> QuarantineScreen:
    await pilot.press("f3")
    await wait_for(pilot, lambda: isinstance(app.screen, QuarantineScreen), what="quarantine")
    table = app.screen.query_one(PagedTable)
    await wait_for(pilot, lambda: len(table.rows) == count and table.total == count,
                   what=f"{count} rows")
    return app.screen  # type: ignore[return-value]


def statuses(screen: QuarantineScreen) -> dict[str, str]:
    return {row.item.record_id: row.item.status for row in screen.query_one(PagedTable).rows}


async def stored(tmp_path: Path) -> dict[str, object]:
    async with Workspace(tmp_path) as workspace:
        return {row.record_id: row for row in await workspace.quarantine(status=None)}


async def test_the_list_and_the_detail(tmp_path: Path, quarantined) -> None:
    path, run_id = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 3)
        assert statuses(screen) == {"r0": "open", "r3": "open", "r6": "open"}
        detail = screen.query_one(QuarantineDetail)
        await wait_for(pilot, lambda: detail.actions == [], what="the (empty) action history")
        text = text_of(detail.query_one("#detail-text"))
        assert "none yet" in text
        assert "matches" in text and "expected 'positive', found 'negative'" in text
        assert "text 0" in text  # the input
        assert "row 1 of 3" in str(screen.query_one("#q-list").border_subtitle)


async def test_approve_loads_the_output_and_records_the_action(tmp_path: Path, quarantined) -> None:
    path, _ = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 3)
        await pilot.press("a")
        await wait_for(pilot, lambda: statuses(screen)["r0"] == "approved", what="approved")
        assert any("loaded into jsonl://out/results.jsonl" in n.message for n in app._notifications)
        table = screen.query_one(PagedTable)
        assert table.highlighted.item.record_id == "r3"  # on to the next record
        await pilot.press("k")
        detail = screen.query_one(QuarantineDetail)
        await wait_for(pilot, lambda: detail.actions and detail.actions[0].action == "approve",
                       what="the action in the detail")
        assert "approve by" in text_of(detail.query_one("#detail-text"))
        # The count follows the status filter (open): two left.
        await wait_for(pilot, lambda: screen.query_one(PagedTable).total == 2, what="recount")
    assert destination(path)["r0"]["sentiment"] == "negative"
    assert (await stored(tmp_path))["r0"].status == "approved"


async def test_bulk_discard_asks_first_and_never_loads(tmp_path: Path, quarantined) -> None:
    path, _ = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 3)
        table = screen.query_one(PagedTable)
        first, second, third = [row.item.record_id for row in table.rows]
        await pilot.press("space", "space")  # marks the first two (the cursor moves down)
        assert len(table.marks) == 2
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert app.screen.focused.id == "confirm-no"  # the safe answer has the focus
        app.screen.query_one(Input).value = "spam"
        await pilot.click("#confirm-yes")
        await wait_for(pilot, lambda: statuses(screen) == {first: "discarded",
                                                           second: "discarded", third: "open"},
                       what="discarded")
        assert table.marks == {}
    rows_now = await stored(tmp_path)
    assert rows_now[first].status == "discarded" and rows_now[first].resolution_note == "spam"
    assert not {first, second} & set(destination(path))


async def test_reprocess_with_the_current_prompt(tmp_path: Path, quarantined, llm_server) -> None:
    path, _ = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 3)
        await pilot.press("r")  # the prompt still answers "negative": it stays open
        await wait_for(pilot, lambda: any("still quarantined" in n.message
                                          for n in app._notifications), what="still failing")
        assert statuses(screen)["r0"] == "open"
        (path.parent / "prompt.j2").write_text(
            '{{ input.text }}\nreply: {"sentiment": "{{ input.expected }}"}\n')
        calls = llm_server.count
        await pilot.press("r")
        await wait_for(pilot, lambda: statuses(screen)["r0"] == "reprocessed", what="reprocessed")
        assert llm_server.count == calls + 1
    assert destination(path)["r0"]["sentiment"] == "positive"
    row = (await stored(tmp_path))["r0"]
    assert row.status == "reprocessed" and all(score["passed"] for score in row.scores)


async def test_edit_then_approve(tmp_path: Path, quarantined) -> None:
    path, _ = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 3)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EditOutputScreen), what="the editor")
        editor = app.screen.query_one(TextArea)
        assert '"sentiment": "negative"' in editor.text
        editor.load_text("{not json")
        await pilot.press("ctrl+s")
        error = app.screen.query_one("#edit-error")
        await wait_for(pilot, lambda: "not JSON: line 1" in text_of(error), what="JSON error")
        editor.load_text('{"sentiment": "ecstatic"}')
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "output_schema" in text_of(error), what="schema error")
        assert isinstance(app.screen, EditOutputScreen)  # still open, nothing loaded
        editor.load_text('{"sentiment": "positive"}')
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, QuarantineScreen)
                       and statuses(screen)["r0"] == "approved", what="approved after the edit")
    assert destination(path)["r0"]["sentiment"] == "positive"
    assert (await stored(tmp_path))["r0"].final_output == {"sentiment": "positive"}


async def test_filters_by_stage_status_run_and_reason(tmp_path: Path, quarantined) -> None:
    _, run_id = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 3)
        table = screen.query_one(PagedTable)
        screen.query_one("#q-stage", Select).value = "transform"
        await wait_for(pilot, lambda: table.total == 0 and not table.rows, what="no transform rows")
        screen.query_one("#q-stage", Select).clear()
        await wait_for(pilot, lambda: table.total == 3, what="all stages again")
        screen.query_one("#q-run", Input).value = "no-such-run"
        await wait_for(pilot, lambda: table.total == 0, what="an unknown run matches nothing")
        screen.query_one("#q-run", Input).value = run_id[:18]
        await wait_for(pilot, lambda: table.total == 3, what="the run by its prefix")
        screen.query_one("#q-reason", Input).value = "found 'negative'"
        await wait_for(pilot, lambda: table.total == 3, what="reason filter")
        screen.query_one("#q-reason", Input).value = "nothing like this"
        await wait_for(pilot, lambda: table.total == 0, what="no reason matches")


async def test_the_run_screen_opens_its_quarantine(tmp_path: Path, quarantined) -> None:
    _, run_id = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await app.show_quarantine(run_id=run_id)
        screen = app.screen
        table = screen.query_one(PagedTable)
        await wait_for(pilot, lambda: table.total == 3, what="the run's records")
        assert screen.query_one("#q-run", Input).value == run_id
        assert screen.query_one("#q-status", Select).value == "any"


async def test_paging_keeps_a_bounded_window_over_many_rows(tmp_path: Path) -> None:
    async with await Store.open() as store:
        await store.start_run(RunStart(
            run_id="run-many", pipeline="many", pipeline_version="1", pipeline_path="/x.yaml",
            started_at=T0, config={}, model="m", provider="openai", prompt_hash="h",
            system_hash=None, context_hashes={}, params={}, options={}, source="csv://x.csv",
            destination="jsonl://y.jsonl"))
        for start in range(0, 1500, 500):
            await store.write_results("run-many", "many", [
                quarantined_result(i, REVIEWS[i % len(REVIEWS)]) for i in range(start, start + 500)])
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, QuarantineScreen), what="quarantine")
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: table.total == 1500 and len(table.rows) == 100,
                       what="the first page")
        # Scroll down page after page (keys, then the same action faster): pages arrive as
        # the cursor nears the end of the window, and the window stays bounded.
        for _ in range(5):
            await pilot.press("pagedown")
        assert table.highlighted.key > 5 * 5  # five pages down, whatever a page's height
        while table.highlighted.key < 1200:
            table.action_page(1)
            await pilot.pause()
        await wait_for(pilot, lambda: not table._pending, what="paging to settle")
        assert len(table.rows) <= table.window_size
        ids = [row.key for row in table.rows]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous, no gaps or repeats
        assert table.window_start > 0 and table.highlighted.key > 1000
        assert table.highlighted.key == table.window_start + table.cursor + 1
        # Back up past the window's top: the page before is fetched again.
        while table.highlighted.key > 1:
            table.action_page(-1)
            await pilot.pause()
        await wait_for(pilot, lambda: not table._pending and table.highlighted.key == 1,
                       what="back at the top")
        # End jumps to the last page; Home back to the first.
        await pilot.press("end")
        await wait_for(pilot, lambda: table.highlighted is not None
                       and table.highlighted.key == 1500, what="the last record")
        assert "row 1,500 of 1,500" in table.position
        await pilot.press("home")
        await wait_for(pilot, lambda: table.highlighted is not None
                       and table.highlighted.key == 1, what="the first record")


async def test_the_keymap_from_config_remaps_a_binding(tmp_path: Path, quarantined,
                                                      loom_home: Path) -> None:
    (loom_home / "config.yaml").write_text("workbench:\n  keymap:\n    quarantine.approve: y\n")
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 3)
        await pilot.press("a")  # no longer bound
        await pilot.pause(0.2)
        assert statuses(screen)["r0"] == "open"
        await pilot.press("y")
        await wait_for(pilot, lambda: statuses(screen)["r0"] == "approved", what="approved by y")


def test_seeded_results_are_quarantined() -> None:
    # The helper the paging test relies on builds quarantined results at both stages.
    assert quarantined_result(0, REVIEWS[2]).stage is Stage.TRANSFORM
    assert quarantined_result(0, REVIEWS[0]).outcome is Outcome.QUARANTINED


async def test_a_real_llm_judges_findings_read_in_the_detail(tmp_path: Path) -> None:
    """review_summaries (its judge answers from the sample's cassette, offline): the record the
    judge failed shows the judge's explanation and its criteria met and not met as ✓ / ✗."""
    import shutil

    from tests.tui.conftest import ROOT

    target = tmp_path / "review_summaries"
    shutil.copytree(ROOT / "sample_pipelines" / "review_summaries", target,
                    ignore=shutil.ignore_patterns("out"))
    async with Workspace(tmp_path) as workspace:
        summary = await workspace.run_to_end(workspace.load(target / "pipeline.yaml"))
    assert summary.quarantined == 2
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: table.total == 2, what="two records")
        detail = app.screen.query_one(QuarantineDetail)
        await wait_for(pilot, lambda: detail.actions == [], what="the detail")
        lines = [line.rstrip() for line in text_of(detail.query_one("#detail-text")).splitlines()]
        assert "✗ faithful  0.20 < 0.70  custom_criteria · confidence 0.90 · weight 3 · $0.000101" \
            in lines
        assert "  The review only says the toaster toasts bread; uneven browning and the price" \
            " are invented." in lines
        at = lines.index("  criteria:")
        assert lines[at + 1:at + 4] == ["    ✓ sentiment matches",
                                        "    ✗ no invented facts: uneven browning, price",
                                        "  judge: replay:gpt-4o-mini"]
