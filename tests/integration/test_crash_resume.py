"""kill -9 in the middle of a run, then `loom --run … --resume`: every record loaded exactly once,
and nothing the store had an answer for paid again.

Each test is real processes end to end: the loopback LLM server in a process of its own (it
keeps counting across the crash), a `loom --run` process killed with SIGKILL once a few hundred
records are checkpointed, and a new `loom --run --resume` process. The destination is then
checked record by record.

The bound on model calls is measured on the server's side. An answer is journaled the moment
it arrives (core.llm.answer_journal), so what a crash costs again is only the calls that were
sent and not yet answered when the process died: the resumed run takes the answers that were
received but not yet checkpointed from the journal, and pays for every other record the store
had no answer for, so that

    total calls == records + calls repeated <= records + concurrency

and the summary counts every one of them, the resumed run's own apart.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from core.engine import CHECKPOINT_RECORDS
from tests.pipelines import reply, write_pipeline
from tests.support.loom_process import LoopbackProcess, kill_when, run_loom, start_loom, store_rows

LABELS = ["positive", "negative", "neutral"]
CONCURRENCY = 8


def source_rows(count: int) -> list[dict[str, str]]:
    """Every 13th record disagrees with its expected label: the gate quarantines it. Every
    record costs exactly one call (no repairs, no extract errors)."""
    rows = []
    for i in range(count):
        expected = LABELS[i % 3]
        answer = LABELS[(i + 1) % 3] if i % 13 == 5 else expected
        rows.append({"id": f"r{i:05d}", "text": f"review number {i}", "expected": expected,
                     "reply": reply(answer)})
    return rows


def passing_ids(rows: list[dict[str, str]]) -> set[str]:
    return {row["id"] for i, row in enumerate(rows) if i % 13 != 5}


def checkpointed(home: Path) -> int:
    (count,), = store_rows(home, "SELECT count(*) FROM record_results")
    return count


def crash_and_resume(tmp_path: Path, home: Path, server: LoopbackProcess, pipeline: Path,
                     rows: list[dict[str, str]], kill_after: int) -> dict[str, Any]:
    """Run, SIGKILL once `kill_after` records are checkpointed, resume; what was measured."""
    proc = start_loom("--run", str(pipeline), "--json")
    kill_when(proc, lambda: checkpointed(home) >= kill_after)
    calls_before = server.requests
    (run_id, status), = store_rows(home, "SELECT run_id, status FROM pipeline_runs")
    assert status == "running"  # the crash left it so: nobody could say otherwise
    (answered, paid), = store_rows(
        home, "SELECT count(*), coalesce(sum(llm_calls), 0) FROM record_results WHERE run_id = ?",
        run_id)
    assert answered == paid  # one call per record: every checkpointed record holds its answer
    in_flight = calls_before - paid
    assert 0 < answered < len(rows)

    resumed = run_loom("--run", str(pipeline), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run {run_id} (attempt 2)" in resumed.stderr
    summary = json.loads(resumed.stdout)
    total = server.requests
    measured = {"records": len(rows), "checkpointed_at_kill": answered,
                "calls_at_kill": calls_before, "in_flight_at_kill": in_flight,
                "calls_after_resume": total - calls_before, "total_calls": total}
    print(f"\n{pipeline.parent.name}: {measured}")

    # The acceptance bound, and exactly what makes it hold: the resumed run paid once for each
    # record neither the store nor the journal had an answer for, and for nothing else.
    llm = summary["llm"]
    assert total == len(rows) + llm["calls_repeated"]
    assert llm["calls_repeated"] <= CONCURRENCY
    assert llm["calls_this_attempt"] == total - calls_before
    # What can be in flight is bounded by the checkpoint, not by the run: the calls the client
    # had open plus at most one checkpoint's worth of answers (about 100 ms of them).
    assert in_flight <= CONCURRENCY + CHECKPOINT_RECORDS

    assert summary["run_id"] == run_id and summary["status"] == "success"
    records = summary["records"]
    expected_loaded = len(passing_ids(rows))
    assert records == {"extracted": len(rows), "loaded": expected_loaded,
                       "quarantined": len(rows) - expected_loaded, "skipped": 0}
    assert llm["calls"] == total  # every call the run made, across the kill
    (status, attempts, extracted, loaded, quarantined, skipped), = store_rows(
        home, "SELECT status, attempts, extracted, loaded, quarantined, skipped "
              "FROM pipeline_runs WHERE run_id = ?", run_id)
    assert (status, attempts) == ("success", 2)
    assert extracted == loaded + quarantined + skipped == len(rows)
    outcomes = Counter(dict(store_rows(
        home, "SELECT outcome, count(*) FROM record_results WHERE run_id = ? GROUP BY outcome",
        run_id)))
    assert outcomes == {"loaded": expected_loaded, "quarantined": len(rows) - expected_loaded}
    ids = [row[0] for row in store_rows(home, "SELECT record_id FROM record_results "
                                              "WHERE run_id = ?", run_id)]
    assert len(ids) == len(set(ids)) == len(rows)  # one row per record, none twice

    listed = run_loom("runs", "--json")
    assert [r["status"] for r in json.loads(listed.stdout) if r["run_id"] == run_id] == ["success"]
    return {"run_id": run_id, **measured}


def assert_each_once(loaded_ids: list[str], rows: list[dict[str, str]]) -> None:
    counts = Counter(loaded_ids)
    twice = [record_id for record_id, n in counts.items() if n > 1]
    assert not twice, f"loaded more than once: {twice[:10]}"
    assert set(counts) == passing_ids(rows)


@pytest.fixture
def slow_server():
    # 30 ms a call at 8 in flight: about 250 records a second, so the kill lands mid-run.
    with LoopbackProcess(latency_ms=30) as server:
        yield server


def pipeline_for(folder: Path, rows: list[dict[str, str]], base_url: str, **load: Any) -> Path:
    return write_pipeline(folder, rows=rows, base_url=base_url,
                          transform={"cache": False, "concurrency": CONCURRENCY},
                          load={"destination": "jsonl://out/results.jsonl", **load})


# ---------------------------------------------------------------- the acceptance runs


def test_kill_9_during_1500_records_to_jsonl_then_resume(tmp_path, loom_home, slow_server):
    rows = source_rows(1500)
    pipeline = pipeline_for(tmp_path / "jsonl", rows, slow_server.base_url)
    crash_and_resume(tmp_path, loom_home, slow_server, pipeline, rows, kill_after=400)
    written = [json.loads(line)["id"] for line in
               (tmp_path / "jsonl" / "out" / "results.jsonl").read_text().splitlines()]
    assert_each_once(written, rows)
    leftovers = [p.name for p in (tmp_path / "jsonl" / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the killed attempt's staging file is gone: the resume replaced it


def test_kill_9_during_1500_records_to_sqlite_append_then_resume(tmp_path, loom_home, slow_server):
    rows = source_rows(1500)
    pipeline = pipeline_for(tmp_path / "sqlite", rows, slow_server.base_url,
                            destination="sqlite://out/dest.db", table="reviews")
    crash_and_resume(tmp_path, loom_home, slow_server, pipeline, rows, kill_after=400)
    with sqlite3.connect(tmp_path / "sqlite" / "out" / "dest.db") as db:
        written = [r[0] for r in db.execute('SELECT "id" FROM "reviews"')]
        ledger = db.execute("SELECT count(*) FROM loom_load_ledger").fetchone()[0]
    assert_each_once(written, rows)
    assert ledger == 0  # the run's ledger is cleared once the history store holds it all


# ---------------------------------------------------------------- every other sink


def test_kill_9_into_a_csv_that_already_has_rows(tmp_path, loom_home, slow_server):
    rows = source_rows(400)
    folder = tmp_path / "csv"
    (folder / "out").mkdir(parents=True)
    earlier = folder / "out" / "results.csv"
    earlier.write_text("id,sentiment\nold-1,positive\nold-2,negative\n", encoding="utf-8")
    pipeline = pipeline_for(folder, rows, slow_server.base_url, destination="csv://out/results.csv",
                            mode="append")
    crash_and_resume(tmp_path, loom_home, slow_server, pipeline, rows, kill_after=150)
    with earlier.open(newline="", encoding="utf-8") as handle:
        written = [row["id"] for row in csv.DictReader(handle)]
    assert written[:2] == ["old-1", "old-2"]  # appended after what was there, once
    assert_each_once(written[2:], rows)


def test_kill_9_into_a_sqlite_table_being_replaced(tmp_path, loom_home, slow_server):
    rows = source_rows(400)
    folder = tmp_path / "replace"
    (folder / "out").mkdir(parents=True)
    with sqlite3.connect(folder / "out" / "dest.db") as db:
        db.execute('CREATE TABLE "reviews" ("id" TEXT, "sentiment" TEXT)')
        db.execute("INSERT INTO reviews VALUES ('stale', 'neutral')")
    pipeline = pipeline_for(folder, rows, slow_server.base_url,
                            destination="sqlite://out/dest.db", table="reviews", mode="replace")
    crash_and_resume(tmp_path, loom_home, slow_server, pipeline, rows, kill_after=150)
    with sqlite3.connect(folder / "out" / "dest.db") as db:
        written = [r[0] for r in db.execute('SELECT "id" FROM "reviews"')]
    assert_each_once(written, rows)  # the stale row is replaced, the run's rows are all there


@pytest.mark.postgres
def test_kill_9_into_a_postgres_table_then_resume(tmp_path, loom_home, slow_server, pg_database):
    rows = source_rows(400)
    pipeline = pipeline_for(tmp_path / "pg", rows, slow_server.base_url,
                            destination=pg_database.url, table="reviews")
    crash_and_resume(tmp_path, loom_home, slow_server, pipeline, rows, kill_after=150)
    written = [r[0] for r in pg_database.rows('SELECT "id" FROM "reviews"')]
    assert_each_once(written, rows)
    assert pg_database.rows("SELECT count(*) FROM loom_load_ledger") == [["0"]]


@pytest.mark.s3
def test_kill_9_into_s3_parts_then_resume(tmp_path, loom_home, slow_server, s3):
    s3.client().create_bucket(Bucket="lake")
    rows = source_rows(400)
    pipeline = pipeline_for(tmp_path / "s3", rows, slow_server.base_url,
                            destination="s3://lake/reviews/")
    run = crash_and_resume(tmp_path, loom_home, slow_server, pipeline, rows, kill_after=150)
    client = s3.client()
    keys = [item["Key"] for item in client.list_objects_v2(
        Bucket="lake", Prefix="reviews/").get("Contents", [])]
    assert f"reviews/{run['run_id']}/_SUCCESS" in keys
    written = []
    for key in keys:
        if key.endswith(".jsonl"):
            body = client.get_object(Bucket="lake", Key=key)["Body"].read().decode("utf-8")
            written.extend(json.loads(line)["id"] for line in body.splitlines())
    assert_each_once(written, rows)  # no record in two parts: the killed attempt's are gone


# ---------------------------------------------------------------- answers not yet checkpointed


def test_kill_9_with_answers_not_yet_checkpointed_pays_only_the_calls_in_flight(
        tmp_path, loom_home, slow_server):
    """800 records at concurrency 8, killed while the server has answered more calls than the
    store has checkpointed (answers that were received and paid for, within the last
    checkpoint interval). Those answers must not be paid again: across the kill and the resume
    the server sees the records plus at most the calls that were in flight, and the summary
    counts every call the server answered."""
    rows = source_rows(800)
    pipeline = pipeline_for(tmp_path / "unsaved", rows, slow_server.base_url)
    proc = start_loom("--run", str(pipeline), "--json")

    def answered_but_not_checkpointed() -> bool:
        done = checkpointed(loom_home)
        return done >= 200 and slow_server.requests - done >= CONCURRENCY + 4

    kill_when(proc, answered_but_not_checkpointed)
    calls_before = slow_server.requests
    resumed = run_loom("--run", str(pipeline), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    total = slow_server.requests
    print(f"\n800 records: {calls_before} calls at the kill, {total} in all; summary {summary['llm']}")
    assert summary["status"] == "success"
    assert summary["records"]["loaded"] == len(passing_ids(rows))
    assert total <= len(rows) + CONCURRENCY
    # The truth about calls, across the crash: every call the server answered is counted, and
    # the resumed run's own are told apart.
    assert summary["llm"]["calls"] == total
    assert summary["llm"]["calls_this_attempt"] == total - calls_before
    assert summary["llm"]["calls_repeated"] == total - len(rows)
    written = [json.loads(line)["id"] for line in
               (tmp_path / "unsaved" / "out" / "results.jsonl").read_text().splitlines()]
    assert_each_once(written, rows)
