"""The Run screen: live progress from the engine's coalesced snapshots, cancel, the summary —
against the loopback LLM server."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.api import Workspace
from loom_tui.app import LoomApp
from loom_tui.messages import RunEnded, RunProgressed
from loom_tui.screens.run import RunScreen
from loom_tui.widgets.stage_counter import StageCounter
from tests.pipelines import read_jsonl, reply, write_pipeline
from loom_tui.screens.confirm import ConfirmScreen
from tests.tui.conftest import SIZE, text_of, wait_for


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 5 == 0 else "positive")} for i in range(count)]


async def test_a_run_shows_progress_then_its_summary(tmp_path: Path, llm_server) -> None:
    llm_server.latency_s = 0.01
    path = write_pipeline(tmp_path / "p", rows=rows(200), base_url=llm_server.base_url,
                          transform={"concurrency": 4}, budget={"max_cost_usd": 1.0})
    app = LoomApp(tmp_path)
    seen: list[object] = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        app.start_run(path)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        screen: RunScreen = app.screen  # type: ignore[assignment]
        await wait_for(pilot, lambda: screen.progress is not None, what="progress")
        await wait_for(pilot, lambda: screen.summary is not None, what="the summary", timeout=60)
        summary = screen.summary
        assert (summary.extracted, summary.loaded, summary.quarantined) == (200, 160, 40)
        assert screen.query_one("#stage-loaded", StageCounter).value == 160
        assert screen.query_one("#stage-quarantined", StageCounter).value == 40
        assert screen.query_one("#run-summary").display
        # One summary: the live numbers make way for it.
        assert not screen.query_one("#run-metrics").display
        # Rejections (the gate said no) are not errors: nothing failed here.
        assert screen.errors == ()
        assert len(screen.rejections) == 10 and all("matches" in r for r in screen.rejections)
        assert "none" == text_of(screen.query_one("#run-errors-text")).strip()
        assert not screen.check_action("cancel", ())  # nothing left to cancel
        assert screen.progress.budget_usd == 1.0
        # The screen heard a few snapshots a second, never one message per record.
        progressed = [m for m in seen if isinstance(m, RunProgressed)]
        assert 1 <= len(progressed) < 200 / 4
        assert sum(isinstance(m, RunEnded) for m in seen) == 1
    assert len(read_jsonl(path.parent / "out" / "results.jsonl")) == 160
    async with Workspace(tmp_path) as workspace:
        run = await workspace.get_run(summary.run_id)
        assert run.status == "success"


async def test_cancel_stops_cleanly_and_the_run_is_recorded_cancelled(tmp_path: Path,
                                                                      llm_server) -> None:
    llm_server.latency_s = 0.05
    path = write_pipeline(tmp_path / "p", rows=rows(400), base_url=llm_server.base_url,
                          transform={"concurrency": 4})
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.start_run(path)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.progress is not None
                       and app.screen.progress.loaded + app.screen.progress.quarantined > 0,
                       what="records finishing")
        screen: RunScreen = app.screen  # type: ignore[assignment]
        await pilot.press("escape")  # it asks: leaving cancels the run
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        assert app.screen.focused.id == "confirm-no"
        await pilot.press("enter")  # keep it running
        assert app.screen is screen
        await pilot.press("c")
        await wait_for(pilot, lambda: screen.summary is not None, what="the summary", timeout=60)
        summary = screen.summary
        assert summary.status == "cancelled"
        assert summary.skipped > 0
        assert summary.extracted == summary.loaded + summary.quarantined + summary.skipped
        assert llm_server.count < 400
        # Skipped is not rejected: the share is of the records that were judged.
        shown = " ".join(text_of(screen.query_one("#run-summary-text"), 200).split())
        judged = summary.loaded + summary.quarantined
        assert f"({summary.quarantined / judged:.1%} of judged rejected)" in shown, shown
        await pilot.press("escape")
        assert app.screen is not screen
    async with Workspace(tmp_path) as workspace:
        assert (await workspace.get_run(summary.run_id)).status == "cancelled"


@pytest.mark.parametrize(("keymap", "secrets_key"), [(None, "f6"), ("{section.secrets: ctrl+k}", "^k")])
async def test_an_error_that_prevents_the_run_is_one_line(tmp_path: Path, loom_home: Path, llm_server,
                                                          keymap: str | None, secrets_key: str) -> None:
    # The next step names the Secrets key the user has (workbench.keymap), not F6.
    if keymap is not None:
        (loom_home / "config.yaml").write_text(f"workbench:\n  keymap: {keymap}\n")
    path = write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url,
                          transform={"api_key": "${LOOM_TEST_MISSING_KEY}"})
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.start_run(path)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.failure is not None, what="the failure")
        screen = app.screen
        assert "LOOM_TEST_MISSING_KEY" in screen.failure
        assert "\n" not in screen.failure
        # It stops there, and says what to do.
        assert not screen.query_one("#run-bar").display
        shown = " ".join(text_of(screen.query_one("#run-summary-text"), 200).split())
        assert f"{secrets_key} opens Secrets: store LOOM_TEST_MISSING_KEY there" in shown, shown
        await pilot.press("escape")
        assert not isinstance(app.screen, RunScreen)


async def test_quitting_during_a_run_exits_zero_and_records_it(tmp_path: Path, llm_server) -> None:
    llm_server.latency_s = 0.05
    path = write_pipeline(tmp_path / "p", rows=rows(400), base_url=llm_server.base_url,
                          transform={"concurrency": 2})
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.start_run(path)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.run_id is not None, what="the run to start")
        run_id = app.screen.run_id
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        await pilot.click("#confirm-yes")
    assert app.return_code == 0
    async with Workspace(tmp_path) as workspace:
        run = await workspace.get_run(run_id)
        assert run.status == "cancelled"
        assert run.extracted == run.loaded + run.quarantined + run.skipped

