"""Several `loom --run` processes writing one CSV, JSON Lines or JSON file, and a run killed
with SIGKILL around its commit while others write the same file: real processes, a loopback
LLM server process, the file checked row by row.

A file sink stages its rows beside the destination and renames the finished file over it. Two
runs that copied the same old file each rename their own copy: the last rename wins and the
other run's rows are gone, though both say `success`. These tests hold Loom to: every run's
rows are in the file once, whatever the overlap, the kill, or the resume.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import time
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.pipelines import write_pipeline
from tests.support.loom_process import LoopbackProcess, kill_when, run_loom, start_loom, store_rows

LABELS = ["positive", "negative", "neutral"]


def source_rows(count: int, prefix: str, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Every record passes; `extra` fields go into each answer (a CSV gains columns)."""
    return [{"id": f"{prefix}{i:04d}", "text": f"{prefix} review {i}", "expected": LABELS[i % 3],
             "reply": json.dumps({"sentiment": LABELS[i % 3], **(extra or {})})}
            for i in range(count)]


def pipeline(folder: Path, base_url: str, destination: Path, records: int, prefix: str, *,
             extra: dict[str, str] | None = None, concurrency: int = 4, **load: Any) -> Path:
    scheme = destination.suffix.lstrip(".")
    return write_pipeline(folder, rows=source_rows(records, prefix, extra), base_url=base_url,
                          transform={"cache": False, "concurrency": concurrency},
                          load={"destination": f"{scheme}://{destination}", **load})


def ids_in(destination: Path) -> list[str]:
    if not destination.exists():
        return []
    scheme = destination.suffix.lstrip(".")
    if scheme == "jsonl":
        return [json.loads(line)["id"] for line in
                destination.read_text(encoding="utf-8").splitlines() if line]
    if scheme == "json":
        return [row["id"] for row in json.loads(destination.read_text(encoding="utf-8"))]
    with destination.open(newline="", encoding="utf-8") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def summary_of(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def server():
    # 20 ms a call at 4 in flight: a 200-record run lasts about a second, and three of them
    # started together overlap from open to commit.
    with LoopbackProcess(latency_ms=20) as process:
        yield process


# ---------------------------------------------------------------- runs at once


@pytest.mark.parametrize("scheme", ["jsonl", "json", "csv"])
def test_three_runs_appending_to_one_file_at_once_keep_every_row(tmp_path, server, scheme):
    destination = tmp_path / "shared" / f"results.{scheme}"
    paths = [pipeline(tmp_path / f"p{n}", server.base_url, destination, 200, f"p{n}-",
                      mode="append") for n in range(3)]
    procs = [start_loom("--run", str(path), "--json") for path in paths]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        summaries.append(summary_of(out))
    assert [s["status"] for s in summaries] == ["success"] * 3
    assert [s["records"]["loaded"] for s in summaries] == [200] * 3
    written = ids_in(destination)
    print(f"\n{scheme}: 3 runs x 200 rows appended at once -> {len(written)} rows in the file")
    assert len(written) == len(set(written)) == 600
    assert {w.split("-")[0] for w in written} == {"p0", "p1", "p2"}
    assert [p.name for p in destination.parent.iterdir() if p.name != destination.name
            and not p.name.endswith(".lock")] == []  # no staging file left behind


def test_a_run_waits_a_bounded_time_for_the_lock_then_fails_resumably(tmp_path, server):
    destination = tmp_path / "shared" / "results.jsonl"
    destination.parent.mkdir()
    path = pipeline(tmp_path / "p", server.base_url, destination, 60, "w-", lock_timeout_s=1)
    lock = destination.parent / f".{destination.name}.loom.lock"
    # Someone else is committing to the file, and takes forever.
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = run_loom("--run", str(path), "--json")
    finally:
        os.close(fd)
    assert result.returncode == 1, result.stderr
    summary = summary_of(result.stdout)
    assert summary["status"] == "failed"
    assert summary["records"] == {"extracted": 60, "loaded": 0, "quarantined": 0, "skipped": 60}
    assert "waiting for the lock on" in result.stderr
    reason = summary["status_reason"]  # one line: what held it, and what to do
    assert "still locked after 1 s" in reason and "--resume" in reason and "\n" not in reason
    assert not destination.exists()

    resumed = run_loom("--run", str(path), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert summary_of(resumed.stdout)["records"]["loaded"] == 60
    assert sorted(ids_in(destination)) == [f"w-{i:04d}" for i in range(60)]


# ---------------------------------------------------------------- kill -9 at the commit


def _commit_state(home: Path, run_id: str) -> tuple[str, str | None]:
    (status, state), = store_rows(home, "SELECT status, commit_state FROM pipeline_runs "
                                        "WHERE run_id = ?", run_id)
    return status, state


@pytest.mark.parametrize("mode", ["append", "replace"])
@pytest.mark.parametrize("scheme", ["jsonl", "json", "csv"])
def test_killed_right_after_the_rename_then_another_run_appends_then_resume(
        tmp_path, loom_home, server, scheme, mode):
    destination = tmp_path / "shared" / f"results.{scheme}"
    killed = pipeline(tmp_path / "a", server.base_url, destination, 200, "a-", mode=mode)
    # The other run brings a new field: a CSV gets a column, and its old rows are rewritten.
    other = pipeline(tmp_path / "b", server.base_url, destination, 6, "b-", extra={"note": "x"})

    env = {**os.environ, "LOOM_CRASH_AT": "file:renamed"}
    proc = start_loom("--run", str(killed), "--json", env=env)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, err
    (run_id,), = store_rows(loom_home, "SELECT run_id FROM pipeline_runs")
    assert _commit_state(loom_home, run_id) == ("running", "committing")
    assert len(ids_in(destination)) == 200  # the rename happened

    appended = run_loom("--run", str(other), "--json")
    assert appended.returncode == 0, appended.stderr
    assert len(ids_in(destination)) == 206

    resumed = run_loom("--run", str(killed), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = summary_of(resumed.stdout)
    assert summary["run_id"] == run_id and summary["status"] == "success"
    assert summary["records"]["loaded"] == 200
    written = ids_in(destination)
    print(f"\n{scheme} {mode}: after the resume {len(written)} rows, {len(set(written))} unique")
    counts = Counter(written)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1][:5]
    assert len(written) == 206


# ---------------------------------------------------------------- staging files of the dead


def _staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".loom-" in p.name)


def test_staging_files_of_a_killed_run_are_removed_by_the_next_run_not_a_live_ones(
        tmp_path, loom_home):
    destination = tmp_path / "shared" / "results.jsonl"
    with LoopbackProcess(latency_ms=40) as slow:
        dead = pipeline(tmp_path / "dead", slow.base_url, destination, 400, "d-")
        proc = start_loom("--run", str(dead), "--json")

        def checkpointed() -> bool:
            (count,), = store_rows(loom_home, "SELECT count(*) FROM record_results")
            return count >= 60
        kill_when(proc, checkpointed)
        (dead_run,), = store_rows(loom_home, "SELECT run_id FROM pipeline_runs")
        left = _staging(destination.parent)
        assert left and all(dead_run in name for name in left)
        validated = run_loom("validate", "--no-data", str(dead))
        assert validated.returncode == 0, validated.stderr
        assert f"staging files of 1 run that died are beside {destination} ({dead_run})" in \
            validated.stderr
        assert _staging(destination.parent) == left  # said, not removed

        # The next run to that file sweeps them away as it opens.
        # (one call at a time: it is still running when the quick run below has finished)
        live = pipeline(tmp_path / "live", slow.base_url, destination, 300, "l-", concurrency=1)
        live_proc = start_loom("--run", str(live), "--json")

        def live_staging() -> list[str]:
            return [n for n in _staging(destination.parent) if dead_run not in n]
        deadline = time.monotonic() + 60
        while not live_staging() and time.monotonic() < deadline and live_proc.poll() is None:
            time.sleep(0.02)
        assert live_staging(), "the live run never staged anything"
        assert not [n for n in _staging(destination.parent) if dead_run in n]  # gone

        # A run's sweep never takes a live run's staging file.
        quick = pipeline(tmp_path / "quick", slow.base_url, destination, 10, "q-")
        result = run_loom("--run", str(quick), "--json")
        assert result.returncode == 0, result.stderr
        assert "staging file" not in result.stderr
        assert live_proc.poll() is None, "the live run ended before the quick one"
        remaining = _staging(destination.parent)
        assert remaining and remaining == live_staging()  # the live run's: kept

        out, err = live_proc.communicate(timeout=180)
        assert live_proc.returncode == 0, err
    swept = [line for line in err.splitlines() if "staging file" in line]
    assert len(swept) == 1 and "removed 1 staging file" in swept[0] and dead_run in swept[0], err
    assert summary_of(out)["records"]["loaded"] == 300
    written = ids_in(destination)
    assert len(written) == len(set(written)) == 310
    assert _staging(destination.parent) == []
    with sqlite3.connect(loom_home / "loom.db") as db:
        assert db.execute("SELECT status FROM pipeline_runs WHERE run_id = ?",
                          (dead_run,)).fetchone() == ("running",)  # still resumable
