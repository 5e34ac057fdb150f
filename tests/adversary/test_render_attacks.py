"""Attacks on the render budget: "A cancel or SIGTERM stops a render at its next check"."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.adversary.hostile import ROOT, Hostile, ok
from tests.pipelines import reply, write_pipeline

# 10**10 empty loop turns: runs into the 10 s render budget.
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def run_started(home: Path) -> bool:
    db = home / "loom.db"
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM pipeline_runs").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def test_sigterm_does_not_stop_a_template_spinning_in_a_loop(tmp_path):
    """Promise 1 (docs/explanation/guarantees.md: "loops that run past 10 s stop the run with one line and exit 2 ... A
    cancel or SIGTERM stops a render at its next check"). A prompt of two nested empty loops
    (10**10 turns). Once the run is in the store, SIGTERM: Loom prints "stopping: finishing
    records in flight", but the render goes on until its 10 s budget is spent (seen: exit 7 s
    after the signal, the run 10.1 s long, `failed` with "ran past its render budget of
    10 s"), so the signal does not stop the render at its next check; a loop without output
    is apparently checked only against the clock."""
    home = Path(os.environ["LOOM_HOME"])
    with Hostile(lambda n, body: ok(reply("positive"))) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=[{"id": "a", "text": "t"}],
                                  base_url=server.base_url, prompt=SPIN,
                                  evaluate={"evaluators": []})
        proc = subprocess.Popen([sys.executable, "-m", "loom_tui.cli", "--run", str(pipeline),
                                 "--json"], cwd=ROOT, env=os.environ.copy(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not run_started(home) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert proc.poll() is None, proc.communicate()
            time.sleep(1.0)  # the render is under way
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert took < 3, f"the run stopped {took:.1f} s after SIGTERM (exit {proc.returncode}): {err[-400:]}"
