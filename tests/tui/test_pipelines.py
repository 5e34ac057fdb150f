"""The Pipelines screen: every pipeline file under the folder, valid or not; Enter opens the
workbench; r runs it."""

from __future__ import annotations

from pathlib import Path

from loom_tui.app import LoomApp
from loom_tui.screens.pipelines import PipelinesScreen
from loom_tui.screens.run import RunScreen
from loom_tui.screens.workbench import WorkbenchScreen
from loom_tui.widgets.paged_table import PagedTable
from tests.tui.conftest import SIZE, copy_sample, wait_for, write_invalid


def rows(app: LoomApp) -> dict[str, tuple]:
    table = app.screen.query_one(PagedTable)
    return {row.item.name: tuple(str(cell) for cell in row.cells) for row in table.rows}


async def test_pipelines_are_listed_valid_or_not(tmp_path: Path) -> None:
    copy_sample(tmp_path)
    broken = write_invalid(tmp_path)
    line = next(number for number, text in enumerate(broken.read_text().splitlines(), 1)
                if text.startswith("  promt:"))
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(rows(app)) == 2, what="two pipelines")
        listed = rows(app)
        assert listed["customer_sentiment"][2] == "✓ valid"
        assert listed["customer_sentiment"][3] == "never"
        assert line == 17  # the sample's `prompt:` line, after its schema and comment lines
        assert f"line {line}: transform.promt: unknown key (did you mean 'prompt'?)" in \
            listed["broken_pipeline"][2]
        # The invalid one does not open: its error is shown instead.
        table = app.screen.query_one(PagedTable)
        table.cursor = [r.item.name for r in table.rows].index("broken_pipeline")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, PipelinesScreen)
        assert any("broken_pipeline is invalid" in n.message for n in app._notifications)
        # Coming back to the screen rescans the folder and keeps the cursor where it was.
        before = table.highlighted.key
        await pilot.press("f1")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not table.fetching and table.rows, what="the rescan")
        assert table.highlighted.key == before


async def test_enter_opens_the_workbench_and_r_runs(tmp_path: Path) -> None:
    copy_sample(tmp_path)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(rows(app)) == 1, what="the sample pipeline")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen), what="workbench")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, PipelinesScreen), what="back home")
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.summary is not None, what="the run's summary")
        summary = app.screen.summary
        assert (summary.extracted, summary.loaded, summary.quarantined) == (40, 35, 5)
        await pilot.press("escape")
        # Back home, the list shows the run that just finished.
        await wait_for(pilot, lambda: isinstance(app.screen, PipelinesScreen)
                       and rows(app).get("customer_sentiment", ("",) * 8)[3] == "success",
                       what="the last run on the list")
        assert rows(app)["customer_sentiment"][4:6] == ("35", "5")


async def test_an_empty_folder_says_what_to_do(tmp_path: Path) -> None:
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: not table.fetching, what="the scan")
        assert table.rows == []
        assert "no pipelines under" in table.empty_text and "extract:" in table.empty_text
        await pilot.press("enter")
        assert isinstance(app.screen, PipelinesScreen)
