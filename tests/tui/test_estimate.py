"""Estimate before a run (`--estimate` in the workbench): from the Pipelines list or the
workbench, in a worker, with a busy state; the projection, then a run from it on `r`."""

from __future__ import annotations

from pathlib import Path

from core.api import Workspace
from loom_tui import format as fmt
from loom_tui.app import LoomApp
from loom_tui.screens.estimate import EstimateScreen
from loom_tui.screens.pipelines import PipelinesScreen
from loom_tui.screens.run import RunScreen
from loom_tui.screens.workbench import WorkbenchScreen
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.sample_output import SampleOutput
from tests.pipelines import reply, write_pipeline
from tests.tui.conftest import SIZE, text_of, wait_for


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 5 == 0 else "positive")} for i in range(count)]


async def listed(app: LoomApp, pilot) -> PagedTable:
    table = app.screen.query_one(PagedTable)
    await wait_for(pilot, lambda: len(table.rows) > 0, what="the pipelines")
    return table


async def test_estimate_from_the_pipelines_then_run(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(120), base_url=llm_server.base_url)
    llm_server.latency_s = 0.2  # long enough to see the dialog at work
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await listed(app, pilot)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EstimateScreen), what="the dialog")
        dialog: EstimateScreen = app.screen  # type: ignore[assignment]
        assert "transforming and judging the first 20 records" in text_of(
            dialog.query_one("#estimate-text"))
        await wait_for(pilot, lambda: dialog.estimate is not None, what="the estimate")
        llm_server.latency_s = 0.0
        estimate = dialog.estimate
        assert (estimate.sample, estimate.total) == (20, 120)
        assert (estimate.loaded, estimate.quarantined) == (16, 4)
        shown = " ".join(text_of(dialog.query_one("#estimate-text"), 200).split())
        assert "From 20 of about 120 records" in shown  # a CSV's quick count: its lines
        assert f"whole run {fmt.money(estimate.projected_cost_usd)} · 120 calls" in shown
        assert f"{estimate.projected_input_tokens:,} in" in shown
        assert "16 would load · 4 quarantined" in shown
        assert llm_server.count == 20  # the sample only: nothing else was asked
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run")
        await wait_for(pilot, lambda: app.screen.summary is not None, what="the run's end",
                       timeout=60)
        assert app.screen.summary.extracted == 120
    # The sample's answers are in the cache: the same estimate again projects the same.
    async with Workspace(tmp_path) as workspace:
        again = await workspace.estimate(workspace.load(path), sample=20)
    assert (again.projected_cost_usd, again.projected_calls, again.projected_input_tokens) == (
        estimate.projected_cost_usd, estimate.projected_calls, estimate.projected_input_tokens)


async def test_estimate_from_the_workbench_says_it_uses_the_saved_prompt(tmp_path: Path,
                                                                        llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(30), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await listed(app, pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen)
                       and app.screen.query_one(SampleOutput).results, what="the workbench")
        workbench = app.screen
        editor = workbench.query_one(PromptEditor)
        editor.load_text(editor.text + "\nBe brief.\n")
        await pilot.pause()
        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, EstimateScreen), what="the dialog")
        assert any("uses the saved prompt" in n.message for n in app._notifications)
        dialog: EstimateScreen = app.screen  # type: ignore[assignment]
        await wait_for(pilot, lambda: dialog.estimate is not None, what="the estimate")
        assert "From 20 of about 30 records" in text_of(dialog.query_one("#estimate-text"))
        await pilot.press("escape")
        assert app.screen is workbench
        # The section keys work with the prompt editor focused (it has F6 and F7 of its own).
        workbench.query_one(PromptEditor).focus()
        await pilot.pause()
        await pilot.press("f6")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "SecretsScreen", what="secrets")


async def test_an_estimate_that_cannot_run_says_why(tmp_path: Path, llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(5), base_url=llm_server.base_url,
                   transform={"api_key": "${LOOM_NEVER_SET_KEY}"})
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await listed(app, pilot)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EstimateScreen), what="the dialog")
        dialog: EstimateScreen = app.screen  # type: ignore[assignment]
        await wait_for(pilot, lambda: dialog.error is not None, what="the error")
        shown = " ".join(text_of(dialog.query_one("#estimate-text"), 200).split())
        assert shown.startswith("Could not estimate: transform.api_key: secret "
                                "LOOM_NEVER_SET_KEY is not set")
        await pilot.press("r")  # nothing to run from
        assert app.screen is dialog
        await pilot.press("escape")
        assert isinstance(app.screen, PipelinesScreen)
    assert llm_server.count == 0
