"""Everywhere: sections, help, the command palette, themes, keys with ids, quitting, and the
`loom` entry point (the workbench in a real terminal, through tmux)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
from tests.conftest import in_ci
from tests.tui.conftest import ROOT, SIZE, copy_sample, text_of, wait_for


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
    if shutil.which("tmux") is None:
        if in_ci():
            pytest.fail("tmux is missing (CI installs it)")
        pytest.skip("tmux is not installed")
    copy_sample(tmp_path)
    status = tmp_path / "status"
    session = f"loom-test-{os.getpid()}"
    command = (f"cd {shlex.quote(str(tmp_path))} && LOOM_HOME={shlex.quote(str(loom_home))} "
               f"TERM=xterm-256color {shlex.quote(sys.executable)} -m loom_tui.cli . ; "
               f"echo $? > {shlex.quote(str(status))}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "36",
                    command], check=True, env=env)
    try:
        screen = ""
        deadline = time.monotonic() + 30
        while "customer_sentiment" not in screen and time.monotonic() < deadline:
            time.sleep(0.2)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True).stdout
        assert "customer_sentiment" in screen and "valid" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.monotonic() + 30
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_stray_keys_in_a_real_terminal_leave_the_prompt_alone(tmp_path: Path,
                                                             loom_home: Path) -> None:
    """tmux: Enter opens the sample, then the footer's keys and j/k/q as a newcomer presses
    them; the prompt stays as saved, q goes back, ctrl+q exits 0."""
    if shutil.which("tmux") is None:
        if in_ci():
            pytest.fail("tmux is missing (CI installs it)")
        pytest.skip("tmux is not installed")
    pipeline = copy_sample(tmp_path)
    prompt = pipeline.parent / "prompts" / "classify.j2"
    before = prompt.read_text()
    status = tmp_path / "status"
    session = f"loom-keys-{os.getpid()}"
    command = (f"cd {shlex.quote(str(tmp_path))} && LOOM_HOME={shlex.quote(str(loom_home))} "
               f"TERM=xterm-256color {shlex.quote(sys.executable)} -m loom_tui.cli . ; "
               f"echo $? > {shlex.quote(str(status))}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "36",
                    command], check=True, env=env)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True).stdout

    def until(text: str) -> str:
        shown, deadline = "", time.monotonic() + 30
        while text not in shown and time.monotonic() < deadline:
            time.sleep(0.2)
            shown = screen()
        assert text in shown, shown
        return shown

    try:
        until("customer_sentiment")
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        until("5 records")
        for key in ("Enter", "Escape", "j", "j", "+", "-", "k", "Tab", "j", "q"):
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            time.sleep(0.3)
        until("Rescan")  # back on the pipelines: its footer
        assert prompt.read_text() == before
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.monotonic() + 30
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_an_edit_and_a_variant_answer_in_a_real_terminal(tmp_path: Path, loom_home: Path) -> None:
    """tmux, offline (the sample's replay cassette): open the sample, enter the editor and
    type — the pane says what would answer an edit the demo has no answer for — then load a
    prompt variant with v and see the outputs and verdicts change against the saved prompt."""
    if shutil.which("tmux") is None:
        if in_ci():
            pytest.fail("tmux is missing (CI installs it)")
        pytest.skip("tmux is not installed")
    pipeline = copy_sample(tmp_path)
    prompt = pipeline.parent / "prompts" / "classify.j2"
    before = prompt.read_text()
    status = tmp_path / "status"
    session = f"loom-variant-{os.getpid()}"
    command = (f"cd {shlex.quote(str(tmp_path))} && LOOM_HOME={shlex.quote(str(loom_home))} "
               f"TERM=xterm-256color {shlex.quote(sys.executable)} -m loom_tui.cli . ; "
               f"echo $? > {shlex.quote(str(status))}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "45",
                    command], check=True, env=env)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True).stdout

    def until(*texts: str) -> str:
        shown, deadline = "", time.monotonic() + 30
        while not all(t in shown for t in texts) and time.monotonic() < deadline:
            time.sleep(0.2)
            shown = screen()
        assert all(t in shown for t in texts), shown
        return shown

    def keys(*pressed: str) -> None:
        for key in pressed:
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            time.sleep(0.3)

    try:
        until("customer_sentiment")
        keys("Enter")
        saved = until("5 records · 5 pass · 0 fail", "replay/gpt-4o-mini")
        assert "R003  ✓ pass" in saved
        keys("i", "Home")  # the editor opens on line 1: type at its start
        subprocess.run(["tmux", "send-keys", "-t", session, "-l", "Be brief. "], check=True)
        missed = until("No recorded answer for this prompt", "0 pass · 5 fail")
        assert "press m" in missed and "--record" not in missed
        keys("Escape", "v")
        until("Prompt variants", "Short summary")
        keys("Down", "Enter")
        changed = until("4 pass · 1 fail", "your edit against the saved prompt")
        assert "R003  pass→fail" in changed and "R003  ✗ fail" in changed, changed
        assert changed != saved
        assert prompt.read_text() == before  # loaded as an unsaved edit
        keys("q")
        until("Unsaved prompt")
        keys("Tab", "Enter")  # the safe answer has the focus: Tab to "Leave", then Enter
        until("Rescan")
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.monotonic() + 30
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status.read_text().strip() == "0"
        assert prompt.read_text() == before
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
