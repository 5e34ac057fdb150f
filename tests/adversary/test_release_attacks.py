"""Attacks on "passing records of a held run can be released exactly once"."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.adversary.hostile import ROOT, Hostile, loom, ok, openai_error, prompt_text
from tests.pipelines import reply, write_pipeline


def _state(home: Path, run_id: str) -> str | None:
    try:
        with sqlite3.connect((home / "loom.db").resolve().as_uri() + "?mode=ro", uri=True,
                             timeout=30) as db:
            row = db.execute("SELECT commit_state FROM pipeline_runs WHERE run_id = ?",
                             (run_id,)).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def test_a_release_killed_midway_can_be_released_again(tmp_path, loom_home):
    """Guarantee 3: the passing records of a held run can be released (exactly once). A
    `loom release` SIGKILLed while it writes (commit_state 'releasing') leaves the run in
    'releasing' for ever: every later `loom release RUN_ID` answers exit 2 "is being released by
    another process (or a release of it was interrupted)" and there is no way to publish the
    held records (core/release.py: release_run never reclaims a stale RELEASING claim)."""
    def handler(n, body):
        if "review 7\n" in prompt_text(body):
            return openai_error(500, "boom")
        return ok(reply("positive"))

    rows = [{"id": f"r{i:05d}", "text": f"review {i}", "reply": reply("positive"),
             "expected": "positive"} for i in range(3000)]
    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"concurrency": 32, "max_retries": 0},
                                  load={"destination": "jsonl://out/results.jsonl",
                                        "mode": "replace"})
        code, summary, err = loom("--run", str(pipeline), "--json", timeout=300)
    assert code == 3 and summary["status"] == "partial", err
    run_id = summary["run_id"]
    assert _state(loom_home, run_id) == "held"

    proc = subprocess.Popen([sys.executable, "-m", "loom_tui.cli", "release", run_id], cwd=ROOT,
                            env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _state(loom_home, run_id) != "releasing" and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the release finished before it could be killed"

    again = subprocess.run([sys.executable, "-m", "loom_tui.cli", "release", run_id], cwd=ROOT,
                           env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    lines = (tmp_path / "p" / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2999


def _held_run(tmp_path: Path, count: int = 40) -> tuple[Path, str]:
    def handler(n, body):
        if "review 7\n" in prompt_text(body):
            return openai_error(500, "boom")
        return ok(reply("positive"))

    rows = [{"id": f"r{i:05d}", "text": f"review {i}", "reply": reply("positive"),
             "expected": "positive"} for i in range(count)]
    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"max_retries": 0},
                                  load={"destination": "jsonl://out/results.jsonl",
                                        "mode": "replace"})
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert code == 3 and summary["status"] == "partial", err
    return pipeline.parent / "out" / "results.jsonl", summary["run_id"]


def _release(run_id: str, crash_at: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **({"LOOM_CRASH_AT": crash_at} if crash_at else {})}
    return subprocess.Popen([sys.executable, "-m", "loom_tui.cli", "release", run_id], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_release_killed_after_the_destination_committed_does_not_write_again(tmp_path,
                                                                                loom_home):
    """Killed between the sink's commit and the store noting it: the next release finds the
    destination published (the commit token) and only says so in the store."""
    out, run_id = _held_run(tmp_path)
    proc = _release(run_id, "release:committed")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert _state(loom_home, run_id) == "releasing"
    published = os.stat(out)
    again = subprocess.run([sys.executable, "-m", "loom_tui.cli", "release", run_id], cwd=ROOT,
                           env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "39 records" in again.stdout and "interrupted" in again.stdout, again.stdout
    assert os.stat(out).st_ino == published.st_ino  # not written again
    assert len(out.read_text().splitlines()) == 39
    assert _state(loom_home, run_id) == "released"
    with sqlite3.connect(loom_home / "loom.db") as db:
        loaded, = db.execute("SELECT loaded FROM pipeline_runs WHERE run_id = ?",
                             (run_id,)).fetchone()
    assert loaded == 39  # counted once


def test_a_live_release_is_refused_in_one_line(tmp_path, loom_home):
    out, run_id = _held_run(tmp_path)
    holder = _release(run_id, "release:committing:stop")
    try:
        deadline = time.monotonic() + 60
        while True:
            with open(f"/proc/{holder.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        other = subprocess.run([sys.executable, "-m", "loom_tui.cli", "release", run_id],
                               cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True,
                               timeout=120)
        assert other.returncode == 2
        line, = other.stderr.strip().splitlines()
        assert f"is being released by pid {holder.pid} on " in line, line
    finally:
        holder.send_signal(signal.SIGCONT)
    holder.communicate(timeout=120)
    assert holder.returncode == 0
    assert len(out.read_text().splitlines()) == 39
