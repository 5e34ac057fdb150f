"""`loom --run … --shard I/N`: N workers split one source, every record in exactly one shard.

The shard runs are real `loom` processes running at the same time against one SQLite history
store and the loopback LLM server, as N Airflow workers would.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from core import cli
from tests.pipelines import read_jsonl, reply, write_csv, write_pipeline

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["positive", "negative", "neutral"]
SHARDS = 4


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def source_rows(count: int) -> list[dict[str, str]]:
    """Rows that pass, rows the gate rejects, and rows without an id (extract errors)."""
    rows = []
    for i in range(count):
        expected = LABELS[i % 3]
        answer = LABELS[(i + 1) % 3] if i % 7 == 0 else expected
        rows.append({"id": f"r{i:04d}" if i % 25 != 3 else "", "text": f"review number {i}",
                     "expected": expected, "reply": reply(answer)})
    return rows


def write_source_with_broken_lines(path: Path, rows: list[dict[str, str]]) -> None:
    """The CSV, with lines the reader cannot parse in between (their ids are row hashes)."""
    write_csv(path, rows)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for at in (5, 40, 77):
        lines.insert(at, f"broken line {at},with,far,too,many,fields,here\n")
    path.write_text("".join(lines), encoding="utf-8")


def start_shard(pipeline: Path, index: int, group: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loom_tui.cli", "--run", str(pipeline), "--shard",
         f"{index}/{SHARDS}", "--shard-group", group, "--json", *extra],
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str]) -> dict:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out)


def stored_results(home: Path, run_ids: list[str]) -> list[tuple[str, str, str]]:
    """(run_id, record_id, outcome) of every record of these runs, from the history store."""
    with sqlite3.connect(home / "loom.db") as db:
        marks = ",".join("?" * len(run_ids))
        return db.execute(f"SELECT run_id, record_id, outcome FROM record_results "
                          f"WHERE run_id IN ({marks})", run_ids).fetchall()


def test_four_parallel_shards_cover_the_source_exactly_once(tmp_path, llm_server, loom_home, capsys):
    rows = source_rows(120)
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    write_source_with_broken_lines(folder / "reviews.csv", rows)

    # The same pipeline unsharded: what the four shards together must add up to.
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json",
                             "--set", "load.destination=jsonl://out/whole.jsonl")
    assert code == 0, err
    whole = json.loads(out)
    assert whole["records"]["extracted"] == 123  # 120 rows and 3 broken lines
    whole_loaded = read_jsonl(folder / "out" / "whole.jsonl")

    processes = [start_shard(pipeline, i, "nightly-1") for i in range(SHARDS)]
    summaries = [finish(p) for p in processes]

    # Each shard says which it was; together they extracted every record once.
    assert sorted(s["shard"]["index"] for s in summaries) == [0, 1, 2, 3]
    assert {s["shard"]["group"] for s in summaries} == {"nightly-1"}
    for key in ("extracted", "loaded", "quarantined", "skipped"):
        assert sum(s["records"][key] for s in summaries) == whole["records"][key], key
    assert all(0 < s["records"]["extracted"] < 123 for s in summaries)

    # Record by record: the destination files hold exactly what one unsharded run loads.
    loaded = [row for i in range(SHARDS) for row in read_jsonl(folder / "out" / f"results-{i}.jsonl")]
    assert Counter(r["id"] for r in loaded) == Counter(r["id"] for r in whole_loaded)
    assert all(count == 1 for count in Counter(r["id"] for r in loaded).values())

    # And the history: every source record is a record of exactly one shard run, extract
    # errors (ids are row hashes) included.
    shard_runs = [s["run_id"] for s in summaries]
    results = stored_results(loom_home, shard_runs)
    whole_results = stored_results(loom_home, [whole["run_id"]])
    assert len(results) == 123
    assert Counter(r[1] for r in results) == Counter(r[1] for r in whole_results)
    by_run = {run_id: {r[1] for r in results if r[0] == run_id} for run_id in shard_runs}
    assert sum(len(ids) for ids in by_run.values()) == len(set().union(*by_run.values()))
    broken = [r for r in whole_results if r[2] == "quarantined" and not r[1].startswith("r")]
    assert len(broken) == 3 + 120 // 25 + 1  # broken lines and rows without an id
    assert {r[1] for r in broken} <= {r[1] for r in results}


def test_loom_runs_sums_a_shard_group(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(60), base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    summaries = []
    for index in range(SHARDS):
        code, out, err = run_cli(capsys, "--run", str(pipeline), "--shard", f"{index}/{SHARDS}",
                                 "--shard-group", "batch-7", "--json")
        assert code == 0, err
        summaries.append(json.loads(out))
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json",
                             "--set", "load.destination=jsonl://out/whole.jsonl")
    single = json.loads(out)

    code, out, _ = run_cli(capsys, "runs", "--json")
    entries = json.loads(out)
    assert [e["kind"] for e in entries] == ["run", "shard_group"]
    assert entries[0]["run_id"] == single["run_id"] and entries[0]["shard"] is None
    group = entries[1]
    assert group["group"] == "batch-7" and group["status"] == "success"
    assert group["shards"] == {"count": 4, "ran": 4, "missing": []}
    for key in ("extracted", "loaded", "quarantined", "skipped"):
        assert group["records"][key] == sum(s["records"][key] for s in summaries)
        assert group["records"][key] == single["records"][key]
    assert group["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in summaries))
    assert group["tokens"]["input"] == sum(s["tokens"]["input"] for s in summaries)
    assert sorted(r["run_id"] for r in group["runs"]) == sorted(s["run_id"] for s in summaries)
    assert sorted(r["shard"]["index"] for r in group["runs"]) == [0, 1, 2, 3]

    code, out, _ = run_cli(capsys, "runs")
    assert code == 0
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if "shard group batch-7" in line)
    assert "(4/4 shards)" in lines[head] and "success" in lines[head]
    assert f" {group['records']['loaded']} " in lines[head]
    members = lines[head + 1:head + 5]
    assert [m.split()[1] for m in members] == ["0/4", "1/4", "2/4", "3/4"]


def test_a_retried_shard_counts_once_and_a_missing_one_leaves_the_group_running(
        tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(40), base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    for index in (0, 1, 1):  # shard 1 ran twice (an Airflow retry); shards 2 and 3 not yet
        code, _, err = run_cli(capsys, "--run", str(pipeline), "--shard", f"{index}/{SHARDS}",
                               "--shard-group", "g", "--json")
        assert code == 0, err
    code, out, _ = run_cli(capsys, "runs", "--json")
    (group,) = json.loads(out)
    assert group["status"] == "running"
    assert group["shards"] == {"count": 4, "ran": 2, "missing": [2, 3]}
    assert len(group["runs"]) == 3
    newest = {}
    for run in reversed(group["runs"]):  # oldest first: later attempts replace earlier ones
        newest[run["shard"]["index"]] = run
    assert group["records"]["extracted"] == sum(r["records"]["extracted"] for r in newest.values())
    code, out, _ = run_cli(capsys, "runs")
    assert "(retried)" in out and "(2/4 shards)" in out


def test_shards_with_a_limit_process_what_one_run_with_that_limit_would(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(80), base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    extracted = 0
    for index in range(SHARDS):
        code, out, err = run_cli(capsys, "--run", str(pipeline), "--shard", f"{index}/{SHARDS}",
                                 "--shard-group", "sample", "--limit", "30", "--json")
        assert code == 0, err
        extracted += json.loads(out)["records"]["extracted"]
    assert extracted == 30


def test_four_shards_append_into_one_sqlite_table_at_once(tmp_path, llm_server):
    folder = tmp_path / "p"
    rows = source_rows(100)
    pipeline = write_pipeline(folder, rows=rows, base_url=llm_server.base_url,
                              extract={"id_field": None},  # ids are row hashes
                              load={"destination": "sqlite://out/results.db", "table": "scores",
                                    "mode": "append", "fields": {"text": "input.text",
                                                                 "sentiment": "output.sentiment"}})
    summaries = [finish(p) for p in [start_shard(pipeline, i, "db") for i in range(SHARDS)]]
    assert sum(s["records"]["extracted"] for s in summaries) == 100
    with sqlite3.connect(folder / "out" / "results.db") as db:
        texts = [t for (t,) in db.execute('SELECT "text" FROM "scores"')]
    assert len(texts) == sum(s["records"]["loaded"] for s in summaries)
    assert len(set(texts)) == len(texts)
    passing = {r["text"] for i, r in enumerate(rows) if i % 7 != 0}
    assert set(texts) == passing, summaries


def test_quarantined_record_of_a_shard_is_approved_into_that_shards_file(tmp_path, llm_server, capsys):
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=source_rows(40), base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    for index in range(2):
        code, out, err = run_cli(capsys, "--run", str(pipeline), "--shard", f"{index}/2",
                                 "--shard-group", "q", "--json")
        assert code == 0, err
        if json.loads(out)["records"]["quarantined"]:
            shard = index
            run_id = json.loads(out)["run_id"]
    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", run_id, "--stage", "evaluate",
                           "--json")
    item = json.loads(out)[0]
    before = read_jsonl(folder / "out" / f"results-{shard}.jsonl")
    code, out, err = run_cli(capsys, "quarantine", "approve", str(item["id"]))
    assert code == 0, err
    after = read_jsonl(folder / "out" / f"results-{shard}.jsonl")
    assert [r["id"] for r in after] == [r["id"] for r in before] + [item["record_id"]]
    assert not (folder / "out" / "results-{shard}.jsonl").exists()


@pytest.mark.parametrize("shard, message", [
    ("4/4", "--shard 4/4: I must be between 0 and 3 (shards are numbered from 0"),
    ("-1/4", "--shard -1/4: I must be between 0 and 3"),
    ("0/0", "--shard 0/0: N must be between 1 and"),
    ("two/4", "--shard 'two/4': expected I/N"),
    ("1", "--shard '1': expected I/N"),
])
def test_a_bad_shard_is_one_line_and_exit_2(tmp_path, capsys, shard, message):
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(3))
    code, out, err = run_cli(capsys, "--run", str(pipeline), f"--shard={shard}", "--shard-group", "g")
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_shard_needs_a_group_unless_airflow_names_it(tmp_path, llm_server, capsys, monkeypatch):
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(6), base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    for name in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_TASK_ID", "AIRFLOW_CTX_DAG_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(capsys, "--run", str(pipeline), "--shard", "1/2")
    assert code == 2 and err == ("error: --shard 1/2 needs --shard-group NAME, the same for the 2 "
                                 "runs that split the source (e.g. the date of the batch)\n")
    code, _, err = run_cli(capsys, "--run", str(pipeline), "--shard-group", "g")
    assert code == 2 and err == "error: --shard-group needs --shard I/N\n"

    # Under Airflow (a BashOperator running `loom --run … --shard {{ ti.map_index }}/2`), the
    # mapped task's identity is the group.
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "reviews")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "classify")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-01-01T00:00:00+00:00")
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--shard", "1/2", "--json")
    assert code == 0, err
    assert json.loads(out)["shard"] == {
        "index": 1, "count": 2, "group": "reviews.classify.scheduled__2026-01-01T00:00:00+00:00"}


@pytest.mark.parametrize("load, message", [
    ({"destination": "jsonl://out/results.jsonl"},
     "load.destination jsonl://out/results.jsonl: 4 shards would overwrite each other's file; put "
     "{shard} in the file name (e.g. jsonl://out/results-{shard}.jsonl) or load into a database "
     "table"),
    ({"destination": "csv://out/results.csv", "mode": "append"},
     "load.destination csv://out/results.csv: 4 shards would overwrite each other's file"),
    ({"destination": "sqlite://out/r.db", "table": "t", "mode": "replace"},
     "load.destination sqlite://out/r.db: mode replace with 4 shards: each shard would replace "
     "the rows the others loaded; use mode append or upsert, or put {shard} in the destination"),
])
def test_a_destination_shards_would_clobber_is_refused_before_the_run(tmp_path, capsys, load,
                                                                     message):
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(3), load=load)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--shard", "0/4", "--shard-group", "g")
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    code, out, _ = run_cli(capsys, "runs", "--json")
    assert json.loads(out) == []  # refused before anything was recorded


def test_an_unsharded_run_fills_shard_placeholder_with_0(tmp_path, llm_server, capsys):
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=source_rows(6), base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert len(read_jsonl(folder / "out" / "results-0.jsonl")) == json.loads(out)["records"]["loaded"]


@pytest.mark.postgres
def test_four_parallel_shards_share_a_postgresql_history_store(tmp_path, llm_server, pg_database,
                                                              monkeypatch, capsys):
    # The team set-up: workers on several machines, one PostgreSQL history store.
    monkeypatch.setenv("LOOM_STORE_URL", pg_database.url)
    rows = source_rows(80)
    pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results-{shard}.jsonl"})
    summaries = [finish(p) for p in [start_shard(pipeline, i, "pg-1") for i in range(SHARDS)]]
    assert sum(s["records"]["extracted"] for s in summaries) == 80
    loaded = [r["id"] for i in range(SHARDS)
              for r in read_jsonl(tmp_path / "p" / "out" / f"results-{i}.jsonl")]
    assert len(loaded) == len(set(loaded)) == sum(s["records"]["loaded"] for s in summaries)

    code, out, _ = run_cli(capsys, "runs", "--json")
    (group,) = [e for e in json.loads(out) if e["kind"] == "shard_group" and e["group"] == "pg-1"]
    assert group["status"] == "success" and group["shards"]["ran"] == 4
    assert group["records"]["extracted"] == 80
    assert group["records"]["loaded"] == len(loaded)
