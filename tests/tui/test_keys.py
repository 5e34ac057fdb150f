"""The key model: the workbench opens on its records, typing into the prompt is a mode you
enter (enter or i) and leave (escape), stray keys never reach the prompt, the footer shows the
keys of the focused pane, q and ? work where nothing is typed, a section's key goes back to its
list, z maximises a pane, and the palette lists each command once."""

from __future__ import annotations

from pathlib import Path

import yaml
from textual.command import CommandList, CommandPalette

from loom_tui.app import LoomApp
from loom_tui.screens.confirm import ConfirmScreen
from loom_tui.screens.help import HelpScreen
from loom_tui.screens.pipelines import PipelinesScreen
from loom_tui.screens.workbench import WorkbenchScreen
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.sample_output import SampleOutput
from tests.pipelines import reply, write_pipeline
from tests.tui.conftest import wait_for

SMALL = (80, 24)


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("positive")} for i in range(count)]


async def open_from_the_list(app: LoomApp, pilot) -> WorkbenchScreen:
    """As a person does: the pipelines list, enter."""
    table = app.screen.query_one(PagedTable)
    await wait_for(pilot, lambda: bool(table.rows), what="the pipelines")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen), what="workbench")
    screen = app.screen
    output = screen.query_one(SampleOutput)
    await wait_for(pilot, lambda: len(output.results) > 0 and not output.busy, what="sample")
    return screen  # type: ignore[return-value]


def footer_keys(screen) -> list[str]:
    footer = screen.query_one(LoomFooter)
    return [f"{key.key_display} {key.description}".strip()
            for key in footer.query("FooterKey")]


async def test_stray_keys_never_change_the_prompt(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(6), base_url=llm_server.base_url)
    before = (path.parent / "prompt.j2").read_text()
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SMALL) as pilot:
        screen = await open_from_the_list(app, pilot)
        editor = screen.query_one(PromptEditor)
        table = screen.query_one("#records-table", PagedTable)
        assert table.has_focus and not editor.editing  # it opens on the records
        # The footer's own keys, pressed on the records: they act, nothing is typed.
        await pilot.press("plus", "j", "j", "k", "minus")
        assert table.cursor == 1
        assert editor.text == before
        # On the prompt pane too, until editing starts.
        editor.focus()
        await pilot.press("plus", "minus", "j", "k", "space", "question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert editor.text == before and not editor.editing
        await pilot.press("enter")  # starts editing: no newline
        assert editor.editing and editor.text == before
        await pilot.press("escape")  # stops editing, stays on the workbench
        assert not editor.editing and app.screen is screen
        await pilot.press("q")  # nothing was typed: back to the pipelines
        await wait_for(pilot, lambda: isinstance(app.screen, PipelinesScreen), what="back")
    assert (path.parent / "prompt.j2").read_text() == before


async def test_editing_is_a_mode_and_the_footer_follows_it(tmp_path: Path, llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SMALL) as pilot:
        screen = await open_from_the_list(app, pilot)
        editor = screen.query_one(PromptEditor)
        keys = footer_keys(screen)
        # At 80 columns the way back and help lead the footer.
        assert keys[:2] == ["esc Back", "f1 Help"], keys
        # Keys that do not fit whole are left out (ctrl+p lists them), never cut.
        assert "i Edit prompt" in keys
        await pilot.press("i")
        await pilot.pause()
        assert editor.editing and editor.has_focus
        keys = footer_keys(screen)
        assert keys[0] == "esc Stop editing", keys
        assert not any("Sample" in key or "Back" in key for key in keys), keys
        editor.move_cursor(editor.document.end)
        await pilot.press("q", "j", "plus")
        assert editor.text.endswith("qj+")  # typed, as asked
        await pilot.press("escape")
        await pilot.pause()
        assert not editor.editing and "esc Back" in footer_keys(screen)
        # Leaving the pane leaves the mode: coming back does not start typing.
        await pilot.press("i")
        await pilot.press("tab")
        assert not editor.editing


async def test_a_sections_key_goes_back_to_its_list(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SMALL) as pilot:
        await open_from_the_list(app, pilot)
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, PipelinesScreen), what="the list")
        # With unsaved edits it asks first, and Cancel has the focus.
        screen = await open_from_the_list(app, pilot)
        screen.query_one(PromptEditor).load_text("changed {{ input.text }}")
        await wait_for(pilot, lambda: screen.dirty, what="dirty")
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        assert app.screen.focused.id == "confirm-no"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, what="stayed")
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        await pilot.click("#confirm-yes")
        await wait_for(pilot, lambda: isinstance(app.screen, PipelinesScreen), what="left")
    assert (path.parent / "prompt.j2").read_text() != "changed {{ input.text }}"


async def test_z_maximises_the_focused_pane(tmp_path: Path, llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SMALL) as pilot:
        screen = await open_from_the_list(app, pilot)
        await pilot.press("z")
        assert screen.maximized is screen.query_one("#records-pane")
        await pilot.press("z")
        assert screen.maximized is None
        screen.query_one(SampleOutput).focus()
        await pilot.press("z")
        assert screen.maximized is screen.query_one("#output-pane")
        await pilot.press("escape")  # escape restores, as everywhere in Textual
        assert screen.maximized is None and app.screen is screen


async def test_the_palette_lists_each_command_once(tmp_path: Path, llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=(120, 36)) as pilot:
        await open_from_the_list(app, pilot)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        commands = app.screen.query_one(CommandList)
        await wait_for(pilot, lambda: commands.option_count > 5, what="commands")
        prompts = [str(commands.get_option_at_index(i).prompt).split("\n")
                   for i in range(commands.option_count)]
        titles = [lines[0] for lines in prompts]
        assert len(titles) == len(set(titles)), titles
        assert not any(len(lines) > 1 and lines[0] == lines[1] for lines in prompts), prompts
        assert sum("theme" in title.lower() or "light" in title.lower()
                   for title in titles) == 1, titles


async def test_the_theme_is_remembered(tmp_path: Path, loom_home: Path) -> None:
    (loom_home / "config.yaml").write_text("workbench:\n  keymap: {app.help: f1}\n")
    app = LoomApp(tmp_path)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: "loom-light" in (loom_home / "config.yaml").read_text(),
                       what="the config written")
    saved = yaml.safe_load((loom_home / "config.yaml").read_text())
    assert saved == {"workbench": {"keymap": {"app.help": "f1"}, "theme": "loom-light"}}
    assert LoomApp(tmp_path).theme == "loom-light"


async def test_keys_stay_remappable_by_id(tmp_path: Path, loom_home: Path, llm_server) -> None:
    (loom_home / "config.yaml").write_text(
        "workbench:\n  keymap: {workbench.edit: e, table.down: n}\n")
    write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SMALL) as pilot:
        screen = await open_from_the_list(app, pilot)
        await pilot.press("n")
        assert screen.query_one("#records-table", PagedTable).cursor == 1
        await pilot.press("e")
        assert screen.query_one(PromptEditor).editing


async def test_notifications_show_data_as_text(tmp_path: Path) -> None:
    """A name with brackets is not markup: it shows as written (and cannot break the line)."""
    app = LoomApp(tmp_path)
    async with app.run_test(size=SMALL) as pilot:
        app.screen.notify("pipeline [bold]x[/bold] [broken")
        app.notify("file [red]y")
        await pilot.pause()
        shown = [n.message for n in app._notifications]
        assert "pipeline [bold]x[/bold] [broken" in shown and "file [red]y" in shown
        assert all(not n.markup for n in app._notifications)
