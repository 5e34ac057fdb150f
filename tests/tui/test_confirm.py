"""Nothing lost without a question: quitting or leaving with unsaved prompt edits or a run
still going asks; F5 with unsaved edits offers save-and-run / run-saved / cancel; a big run
shows its estimate (records, cost, time, budget) first. The safe button has the focus in
every one of these dialogs, so Enter pressed by habit loses nothing."""

from __future__ import annotations

from pathlib import Path


from loom_tui.app import LoomApp
from loom_tui.screens.confirm import ChoiceScreen, ConfirmScreen
from loom_tui.screens.estimate import EstimateScreen
from loom_tui.screens.pipelines import PipelinesScreen
from loom_tui.screens.run import RunScreen
from loom_tui.screens.workbench import WorkbenchScreen
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.sample_output import SampleOutput
from tests.pipelines import REPLY_PROMPT, reply, write_pipeline
from tests.tui.conftest import text_of, wait_for

SIZE = (100, 30)
EDITED = REPLY_PROMPT + "Be brief.\n"


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("positive")} for i in range(count)]


async def edited_workbench(app: LoomApp, pilot) -> WorkbenchScreen:
    table = app.screen.query_one(PagedTable)
    await wait_for(pilot, lambda: bool(table.rows), what="the pipelines")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen)
                   and app.screen.query_one(SampleOutput).results, what="the workbench")
    screen: WorkbenchScreen = app.screen  # type: ignore[assignment]
    screen.query_one(PromptEditor).load_text(EDITED)
    await wait_for(pilot, lambda: screen.dirty, what="unsaved edits")
    return screen


def safe_button_focused(app: LoomApp) -> str | None:
    focused = app.screen.focused
    return focused.id if focused is not None else None


async def test_ctrl_q_with_unsaved_edits_asks(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await edited_workbench(app, pilot)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        assert "prompt.j2 has unsaved changes" in str(app.screen.question)
        assert safe_button_focused(app) == "confirm-no"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, what="stayed")
        assert app.is_running
        # Another section's screen: the edit is still on the pipelines' stack, still asked for.
        await pilot.press("f4")
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        await pilot.click("#confirm-yes")
    assert app.return_code == 0
    assert (path.parent / "prompt.j2").read_text() == REPLY_PROMPT


async def test_escape_with_unsaved_edits_asks_with_cancel_focused(tmp_path: Path,
                                                                   llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await edited_workbench(app, pilot)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        assert safe_button_focused(app) == "confirm-no"
        await pilot.press("enter")
        assert app.screen is screen
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        await pilot.click("#confirm-yes")
        await wait_for(pilot, lambda: isinstance(app.screen, PipelinesScreen), what="left")


async def test_quitting_during_a_run_asks(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: bool(app.screen.query_one(PagedTable).rows), what="list")
        run = RunScreen(path, start=False)
        await app.push_screen(run)
        run.start = True  # as if it were going: no summary, no failure yet
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        assert "still going" in str(app.screen.question)
        assert safe_button_focused(app) == "confirm-no"
        await pilot.press("enter")
        assert app.screen is run and app.is_running
        await pilot.press("escape")  # leaving the run asks too
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        assert app.screen.query_one("#confirm-no").label.plain == "Keep it running"
        assert safe_button_focused(app) == "confirm-no"
        await pilot.press("enter")
        assert app.screen is run


async def test_f5_with_unsaved_edits_offers_save_and_run(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(4), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await edited_workbench(app, pilot)
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen), what="the choice")
        labels = [str(button.label) for button in app.screen.query("Button")]
        assert labels == ["Save and run", "Run saved prompt", "Cancel"]
        assert safe_button_focused(app) == "choice-cancel"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, what="cancelled")
        assert (path.parent / "prompt.j2").read_text() == REPLY_PROMPT
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen), what="the choice")
        await pilot.click("#choice-save")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.summary is not None, what="the run")
    assert (path.parent / "prompt.j2").read_text() == EDITED


async def test_f5_run_saved_prompt_leaves_the_edits(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(4), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await edited_workbench(app, pilot)
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen), what="the choice")
        await pilot.click("#choice-saved")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.summary is not None, what="the run")
        assert screen.dirty  # the editor still holds them
    assert (path.parent / "prompt.j2").read_text() == REPLY_PROMPT


async def test_a_big_run_shows_its_estimate_first(tmp_path: Path, llm_server,
                                                  loom_home: Path) -> None:
    # The thresholds are Loom's config (workbench.confirm_run_above): 30 records is big here.
    (loom_home / "config.yaml").write_text("workbench:\n  confirm_run_above:\n    records: 10\n")
    write_pipeline(tmp_path / "p", rows=rows(30), base_url=llm_server.base_url,
                   budget={"max_cost_usd": 2.5})
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: bool(table.rows), what="the pipelines")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen), what="workbench")
        workbench = app.screen
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, EstimateScreen)
                       and app.screen.estimate is not None, what="the estimate")
        dialog = app.screen
        shown = " ".join(text_of(dialog.query_one("#estimate-text"), 200).split())
        assert "From 20 of about 30 records" in shown
        assert "whole run" in shown and "time" in shown and "budget $2.50" in shown, shown
        assert safe_button_focused(app) == "estimate-cancel"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is workbench, what="cancelled")
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, EstimateScreen)
                       and app.screen.estimate is not None, what="the estimate")
        await pilot.click("#estimate-run")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.summary is not None, what="the run")
        assert app.screen.summary.loaded == 30


async def test_a_small_run_starts_at_once(tmp_path: Path, llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(4), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: bool(table.rows), what="the pipelines")
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.summary is not None, what="the run")
