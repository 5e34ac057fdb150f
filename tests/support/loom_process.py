"""Real `loom` processes and a loopback LLM server process, for crash and concurrency tests.

A crash test kills a `loom --run` process with SIGKILL, so both it and the LLM server must be
processes of their own: the server keeps counting requests across the kill and the resume.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "support" / "llm_server.py"


class LoopbackProcess:
    """tests/support/llm_server.py as a separate process; `stats()` is what it has seen."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", "0", "--latency-ms", str(latency_ms)],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the loopback server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/loopback/stats",
                                    timeout=10) as answer:
            return json.loads(answer.read())

    @property
    def requests(self) -> int:
        """Requests the server handled."""
        return int(self.stats()["requests"])

    @property
    def received(self) -> int:
        """Requests that reached the server, handled or not: one whose client was killed
        right after sending it is dropped by the server unhandled, yet it was made."""
        return int(self.stats()["received"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "LoopbackProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_loom(*args: str, env: dict[str, str] | None = None,
               cwd: Path = ROOT) -> subprocess.Popen[str]:
    """`loom ARGS…` in a process of its own (the environment as the test set it)."""
    return subprocess.Popen([sys.executable, "-m", "loom_tui.cli", *args], cwd=cwd,
                            env=env or os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_loom(*args: str, env: dict[str, str] | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = start_loom(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], *,
              timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as `ready()` says so (polled every 20 ms), and reap it. Fails
    when the process ends on its own first: the crash must happen mid-run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"loom ended (exit {proc.returncode}) before the kill:\n{err[-3000:]}")
        try:
            if ready():
                break
        except sqlite3.Error:
            pass  # the store is being created
        time.sleep(0.02)
    else:
        proc.kill()
        raise AssertionError("the run never got far enough to be killed")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaped: its pid is gone, as after a real crash
    assert proc.returncode == -signal.SIGKILL


def store_rows(home: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A read of the SQLite history store in LOOM_HOME (read-only, as a second process would)."""
    uri = (home / "loom.db").resolve().as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=30) as db:
        return db.execute(sql, params).fetchall()
