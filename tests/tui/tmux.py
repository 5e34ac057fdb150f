"""`loom` in a real terminal: a tmux session the test types into and reads the screen of."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.tui.conftest import ROOT


def need_tmux() -> None:
    """Under CI=true a missing tmux fails the test (CI installs it); elsewhere it skips."""
    if shutil.which("tmux") is None:
        if in_ci():
            pytest.fail("tmux is missing (CI installs it)")
        pytest.skip("tmux is not installed")


class TmuxLoom:
    """`loom .` started in `folder` with its own LOOM_HOME, in a detached tmux session."""

    def __init__(self, folder: Path, loom_home: Path, *, size: tuple[int, int] = (120, 36),
                 name: str = "loom") -> None:
        need_tmux()
        self.session = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        # A tmux server of its own: sessions of tests running at once on one server can take
        # each other's window size.
        self._tmux = ["tmux", "-L", self.session]
        self.status = folder / f".{self.session}.status"
        command = (f"cd {shlex.quote(str(folder))} && LOOM_HOME={shlex.quote(str(loom_home))} "
                   f"TERM=xterm-256color {shlex.quote(sys.executable)} -m loom_tui.cli . ; "
                   f"echo $? > {shlex.quote(str(self.status))}")
        # COLUMNS/LINES (which another test in this process may have set) would override the
        # window's size for the app inside.
        env = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
               "PYTHONPATH": str(ROOT)}
        subprocess.run([*self._tmux, "new-session", "-d", "-s", self.session, "-x", str(size[0]),
                        "-y", str(size[1]), command], check=True, env=env)

    def __enter__(self) -> "TmuxLoom":
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*self._tmux, "kill-server"], capture_output=True)

    def screen(self) -> str:
        return subprocess.run([*self._tmux, "capture-pane", "-p", "-t", self.session],
                              capture_output=True, text=True).stdout

    def until(self, *texts: str, timeout_s: float = 30) -> str:
        """The screen once it shows every one of `texts` (the test fails after `timeout_s`)."""
        shown, deadline = "", time.monotonic() + timeout_s
        while not all(t in shown for t in texts) and time.monotonic() < deadline:
            time.sleep(0.2)
            shown = self.screen()
        assert all(t in shown for t in texts), shown
        return shown

    def keys(self, *pressed: str, pause_s: float = 0.3) -> None:
        for key in pressed:
            subprocess.run([*self._tmux, "send-keys", "-t", self.session, key], check=True)
            time.sleep(pause_s)

    def type(self, text: str) -> None:
        subprocess.run([*self._tmux, "send-keys", "-t", self.session, "-l", text], check=True)

    def quit(self) -> str:
        """ctrl+q, then the exit status loom ended with."""
        subprocess.run([*self._tmux, "send-keys", "-t", self.session, "C-q"], check=True)
        deadline = time.monotonic() + 30
        while not self.status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.status.read_text().strip() if self.status.exists() else "(still running)"
