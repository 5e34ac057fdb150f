"""Several runs at once on one history store, and the workbench reading it while they write:
real `loom --run` processes on a shared SQLite file (WAL, busy timeout, short transactions) and
on a shared PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.api import Workspace
from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.support.loom_process import LoopbackProcess, run_loom, start_loom, store_rows

LABELS = ["positive", "negative", "neutral"]


def rows(count: int, prefix: str) -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i:04d}", "text": f"{prefix} review {i}", "expected": LABELS[i % 3],
             "reply": reply(LABELS[i % 3] if i % 10 else LABELS[(i + 1) % 3])}
            for i in range(count)]


def pipelines(tmp_path: Path, base_url: str, count: int, records: int) -> list[Path]:
    out = []
    for n in range(count):
        path = write_pipeline(tmp_path / f"p{n}", rows=rows(records, f"p{n}-"), base_url=base_url,
                              transform={"concurrency": 4})
        text = path.read_text(encoding="utf-8").replace("name: test_pipeline", f"name: pipeline_{n}")
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


@pytest.fixture
def server():
    # 60 ms a call at 4 in flight: a 300-record run lasts about five seconds, long enough for
    # the later runs to start (a process takes a second or more to start on a loaded machine).
    with LoopbackProcess(latency_ms=60) as process:
        yield process


def runs_at_once(paths: list[Path], env: dict[str, str],
                 running: Callable[[], int] | None = None) -> list[dict]:
    """Start the first run; once the store shows it running (when `running` can tell), the
    others, so that they overlap it."""
    procs = [start_loom("--run", str(paths[0]), "--json", env=env)]
    if running is not None:
        deadline = time.monotonic() + 60
        while running() < 1 and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.02)
    procs += [start_loom("--run", str(path), "--json", env=env) for path in paths[1:]]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out))
    return summaries


def check_both_finished(paths: list[Path], summaries: list[dict], env: dict[str, str],
                        records: int) -> None:
    for path, summary in zip(paths, summaries):
        assert summary["status"] == "success"
        assert summary["records"] == {"extracted": records, "loaded": records * 9 // 10,
                                      "quarantined": records // 10, "skipped": 0}
        written = [row["id"] for row in read_jsonl(path.parent / "out" / "results.jsonl")]
        assert len(written) == len(set(written)) == records * 9 // 10
    listed = run_loom("runs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    by_id = {run["run_id"]: run for run in json.loads(listed.stdout)}
    for summary in summaries:
        run = by_id[summary["run_id"]]
        assert run["status"] == "success" and run["records"] == summary["records"]


def test_three_runs_at_once_on_one_sqlite_store_all_finish_and_are_listed(
        tmp_path, loom_home, server):
    # The first run is three times as long as the others, so that they overlap it even when a
    # loaded machine takes seconds to start a process (CI once saw the first end before).
    paths = pipelines(tmp_path / "long", server.base_url, 1, 900) + \
        pipelines(tmp_path / "short", server.base_url, 3, 300)[1:]
    env = os.environ.copy()

    def running() -> int:
        try:
            return store_rows(loom_home, "SELECT count(*) FROM pipeline_runs")[0][0]
        except sqlite3.Error:
            return 0

    summaries = runs_at_once(paths, env, running)
    check_both_finished(paths[:1], summaries[:1], env, 900)
    check_both_finished(paths[1:], summaries[1:], env, 300)
    # They overlapped: the later two started before the first one finished.
    listed = {run["run_id"]: run for run in json.loads(run_loom("runs", "--json", env=env).stdout)}
    first, *others = [listed[summary["run_id"]] for summary in summaries]
    assert all(other["started_at"] < first["finished_at"] for other in others)


def test_the_same_pipeline_twice_at_once_makes_two_runs(tmp_path, loom_home, server):
    path = write_pipeline(tmp_path / "p", rows=rows(200, "s"), base_url=server.base_url,
                          transform={"concurrency": 4},
                          load={"destination": "sqlite://out/dest.db", "table": "reviews"})
    def running() -> int:
        try:
            return store_rows(loom_home, "SELECT count(*) FROM pipeline_runs")[0][0]
        except sqlite3.Error:
            return 0

    summaries = runs_at_once([path, path], os.environ.copy(), running)
    assert summaries[0]["run_id"] != summaries[1]["run_id"]
    assert [s["records"]["loaded"] for s in summaries] == [180, 180]
    with sqlite3.connect(tmp_path / "p" / "out" / "dest.db") as db:
        assert db.execute("SELECT count(*), count(DISTINCT id) FROM reviews").fetchone() == (360, 180)


@pytest.mark.postgres
def test_two_runs_at_once_on_one_postgres_store(tmp_path, server, pg_database, monkeypatch):
    monkeypatch.setenv("LOOM_STORE_URL", pg_database.url)
    paths = pipelines(tmp_path, server.base_url, 2, 200)
    env = os.environ.copy()

    def running() -> int:
        try:
            return int(pg_database.rows("SELECT count(*) FROM pipeline_runs")[0][0])
        except Exception:  # noqa: BLE001 - the store's tables are being created
            return 0

    summaries = runs_at_once(paths, env, running)
    check_both_finished(paths, summaries, env, 200)
    assert pg_database.rows("SELECT count(*) FROM record_results") == [["400"]]


async def read_like_the_workbench(workspace: Workspace, proc) -> dict[str, int]:
    """What the TUI's screens ask the store, over and over, until the run ends."""
    seen = {"polls": 0, "running": 0, "records": 0}
    while proc.poll() is None:
        history = await workspace.history(limit=20)
        await workspace.runs(limit=20)
        await workspace.unfinished_runs()
        await workspace.quarantine(limit=50)
        await workspace.count_quarantine()
        await workspace.alerts(limit=20)
        for run in history:
            current = await workspace.get_run(run.run_id)
            seen["running"] += current.status == "running"
            page = await (await workspace.store()).record_results(run.run_id, limit=100)
            seen["records"] = max(seen["records"], len(page))
        seen["polls"] += 1
        await asyncio.sleep(0.05)
    return seen


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_the_workbench_reads_the_store_while_a_headless_run_writes(
        tmp_path, loom_home, server, request, monkeypatch, store):
    if store == "postgres":
        monkeypatch.setenv("LOOM_STORE_URL", request.getfixturevalue("pg_database").url)
    (path,) = pipelines(tmp_path, server.base_url, 1, 600)
    async with Workspace(tmp_path) as workspace:
        proc = start_loom("--run", str(path), "--json")
        seen = await read_like_the_workbench(workspace, proc)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        run = await workspace.get_run(summary["run_id"])
    assert seen["polls"] > 5 and seen["running"] > 0 and seen["records"] > 0
    assert run.status == "success" and run.loaded == 540
