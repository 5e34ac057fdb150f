"""Everywhere: sections, help, the command palette, themes, keys with ids, quitting, and the
`loom` entry point (the workbench in a real terminal, through tmux)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from textual.binding import Binding
from textual.command import CommandList, CommandPalette

from loom_tui import cli
from loom_tui.app import LoomApp
from loom_tui.screens import SECTIONS
from loom_tui.screens.help import HelpScreen
from loom_tui.screens.history import HistoryScreen
from loom_tui.screens.pipelines import PipelinesScreen
from loom_tui.screens.quarantine import QuarantineScreen
from loom_tui.screens.secrets import SecretsScreen
from tests.tui.conftest import ROOT, SIZE, copy_sample, text_of, wait_for
from tests.tui.tmux import TmuxLoom


async def test_sections_help_theme_and_quit(tmp_path: Path) -> None:
    copy_sample(tmp_path)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, PipelinesScreen)
        await pilot.press("f3")
        assert isinstance(app.screen, QuarantineScreen)
        await pilot.press("f4")
        assert isinstance(app.screen, HistoryScreen)
        await pilot.press("f6")
        assert isinstance(app.screen, SecretsScreen)
        await pilot.press("f2")
        assert isinstance(app.screen, PipelinesScreen)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        shown = text_of(app.screen.query_one("#help-text"))
        assert "Run this pipeline and watch it" in shown and "Go to Quarantine" in shown
        assert "Go to Secrets: secrets in the keyring, by name" in " ".join(shown.split())
        await pilot.press("escape")
        assert isinstance(app.screen, PipelinesScreen)
        assert app.theme == "loom-dark"
        await pilot.press("ctrl+t")
        assert app.theme == "loom-light"
        await pilot.press("ctrl+q")
    assert app.return_code == 0


def test_every_binding_has_an_id() -> None:
    """Users remap keys by binding id (workbench.keymap): a binding without one cannot be."""
    from loom_tui.screens.compare import CompareScreen
    from loom_tui.screens.confirm import ConfirmScreen
    from loom_tui.screens.edit_output import EditOutputScreen
    from loom_tui.screens.estimate import EstimateScreen
    from loom_tui.screens.model_switcher import ModelSwitcherScreen
    from loom_tui.screens.run import RunScreen
    from loom_tui.screens.set_secret import SetSecretScreen
    from loom_tui.screens.variants import VariantsScreen
    from loom_tui.screens.workbench import WorkbenchScreen
    from loom_tui.widgets.paged_table import PagedTable

    owners = [LoomApp, PipelinesScreen, WorkbenchScreen, RunScreen, QuarantineScreen,
              HistoryScreen, CompareScreen, HelpScreen, ConfirmScreen, EditOutputScreen,
              SecretsScreen, SetSecretScreen, EstimateScreen, PagedTable, VariantsScreen,
              ModelSwitcherScreen]
    ids = []
    for owner in owners:
        for binding in owner.BINDINGS:
            assert isinstance(binding, Binding) and binding.id, f"{owner.__name__}: {binding}"
            ids.append(binding.id)
    assert len(ids) == len(set(ids))
    assert {section.binding.id for section in SECTIONS} <= set(ids)


async def test_the_palette_offers_the_screens_actions(tmp_path: Path, llm_server) -> None:
    from tests.pipelines import reply, write_pipeline
    from core.api import Workspace

    path = write_pipeline(tmp_path / "p", rows=[
        {"id": "r0", "text": "t", "expected": "positive", "reply": reply("negative")}],
        base_url=llm_server.base_url)
    async with Workspace(tmp_path) as workspace:
        await workspace.run_to_end(workspace.load(path))
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        table = app.screen.query_one("#q-table")
        await wait_for(pilot, lambda: table.total == 1, what="one quarantined record")
        quarantine = app.screen
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"approve")
        commands = app.screen.query_one(CommandList)
        await wait_for(pilot, lambda: commands.option_count > 0, what="hits")
        prompts = [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]
        assert any("Approve" in prompt for prompt in prompts)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is quarantine
                       and table.rows[0].item.status == "approved", what="approved")
        # Other sections are a command away too.
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"go to history")
        commands = app.screen.query_one(CommandList)
        await wait_for(pilot, lambda: commands.option_count > 0, what="hits")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")


async def test_an_unknown_theme_in_the_config_is_one_warning(tmp_path: Path,
                                                            loom_home: Path) -> None:
    (loom_home / "config.yaml").write_text("workbench:\n  theme: solarized-purple\n")
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "loom-dark"
        assert any("solarized-purple" in n.message for n in app._notifications)
    # Left for the user to fix: starting is not choosing a theme.
    assert "solarized-purple" in (loom_home / "config.yaml").read_text()
    (loom_home / "config.yaml").write_text("workbench:\n  theme: loom-light\n")
    assert LoomApp(tmp_path).theme == "loom-light"


def test_the_entry_point_sends_headless_commands_to_core(tmp_path: Path, capsys) -> None:
    path = copy_sample(tmp_path)
    assert cli.main(["validate", str(path)]) == 0
    assert "ok customer_sentiment" in capsys.readouterr().out
    assert cli.main([str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_loom_run_does_not_import_textual() -> None:
    code = ("import sys, loom_tui.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'textual']; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_loom_opens_in_a_terminal_and_ctrl_q_exits_zero(tmp_path: Path, loom_home: Path) -> None:
    """The acceptance path in a real terminal (tmux): the sample is listed, ctrl+q exits 0."""
    copy_sample(tmp_path)
    with TmuxLoom(tmp_path, loom_home, name="loom-test") as loom:
        screen = loom.until("customer_sentiment")
        assert "valid" in screen, screen
        assert loom.quit() == "0"


def test_stray_keys_in_a_real_terminal_leave_the_prompt_alone(tmp_path: Path,
                                                             loom_home: Path) -> None:
    """tmux: Enter opens the sample, then the footer's keys and j/k/q as a newcomer presses
    them; the prompt stays as saved, q goes back, ctrl+q exits 0."""
    pipeline = copy_sample(tmp_path)
    prompt = pipeline.parent / "prompts" / "classify.j2"
    before = prompt.read_text()
    with TmuxLoom(tmp_path, loom_home, name="loom-keys") as loom:
        loom.until("customer_sentiment")
        loom.keys("Enter")
        loom.until("5 records")
        loom.keys("Enter", "Escape", "j", "j", "+", "-", "k", "Tab", "j", "q")
        loom.until("Rescan")  # back on the pipelines: its footer
        assert prompt.read_text() == before
        assert loom.quit() == "0"


def test_an_edit_and_a_variant_answer_in_a_real_terminal(tmp_path: Path, loom_home: Path) -> None:
    """tmux, offline (the sample's replay cassette): open the sample, enter the editor and
    type — the pane says what would answer an edit the demo has no answer for — then load a
    prompt variant with v and see the outputs and verdicts change against the saved prompt."""
    pipeline = copy_sample(tmp_path)
    prompt = pipeline.parent / "prompts" / "classify.j2"
    before = prompt.read_text()
    with TmuxLoom(tmp_path, loom_home, size=(160, 45), name="loom-variant") as loom:
        loom.until("customer_sentiment")
        loom.keys("Enter")
        saved = loom.until("5 records · 5 pass · 0 fail", "replay/gpt-4o-mini")
        assert "R003  ✓ pass" in saved
        loom.keys("i", "Home")  # the editor opens on line 1: type at its start
        loom.type("Be brief. ")
        missed = loom.until("No recorded answer for this prompt", "0 pass · 5 fail")
        assert "press m" in missed and "--record" not in missed
        loom.keys("Escape", "v")
        loom.until("Prompt variants", "Short summary")
        loom.keys("Down", "Enter")
        changed = loom.until("4 pass · 1 fail", "your edit against the saved prompt")
        assert "R003  pass→fail" in changed and "R003  ✗ fail" in changed, changed
        assert changed != saved
        assert prompt.read_text() == before  # loaded as an unsaved edit
        loom.keys("q")
        loom.until("Unsaved prompt")
        loom.keys("Tab", "Enter")  # the safe answer has the focus: Tab to "Leave", then Enter
        loom.until("Rescan")
        assert loom.quit() == "0"
        assert prompt.read_text() == before
