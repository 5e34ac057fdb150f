"""Quarantine actions respect the destination's identity: approving (or reprocessing) a record
of a superseded run replaces the row with its id in a `replace` destination, never adds a
second one; a destination that cannot is refused in one line."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from core import cli
from tests.pipelines import read_jsonl, reply, write_pipeline

SAMPLE = Path(__file__).resolve().parents[2] / "sample_pipelines" / "customer_sentiment"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_sample_approved_from_two_runs_keeps_one_row_per_review(tmp_path, capsys):
    folder = tmp_path / "customer_sentiment"
    shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns("out"))
    for _ in range(2):
        code, _, err = run_cli(capsys, "--run", str(folder))
        assert code == 0, err
    code, out, _ = run_cli(capsys, "quarantine", "list", "--json")
    items = json.loads(out)
    by_record: dict[str, list[int]] = {}
    for item in items:
        if item["output"] is None:
            continue  # nothing to approve (not JSON): edit or reprocess it instead
        by_record.setdefault(item["record_id"], []).append(item["id"])
    twice = [ids for ids in by_record.values() if len(ids) == 2]
    assert twice, "each run quarantines the same records"
    code, out, err = run_cli(capsys, "quarantine", "approve", *map(str, sorted(
        i for ids in twice for i in ids)))
    assert code == 0, err
    with (folder / "out" / "sentiment.csv").open(newline="", encoding="utf-8") as handle:
        ids = [row["review_id"] for row in csv.DictReader(handle)]
    assert max(Counter(ids).values()) == 1
    assert set(by_record) <= set(ids)  # each approved record is there, once


def rows(count: int) -> list[dict[str, str]]:
    # r0 and r3 disagree with the truth in every run: quarantined each time.
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 3 == 0 else "positive")} for i in range(count)]


def two_runs_then_approve_both(tmp_path: Path, server, capsys, load: dict) -> list[str]:
    """Two replace runs; r0's quarantined record approved from the older run, then from the
    newer one; the approved record ids in approval order."""
    path = write_pipeline(tmp_path / "p", rows=rows(6), base_url=server.base_url,
                          load={"mode": "replace", **load})
    run_ids = []
    for _ in range(2):
        code, out, err = run_cli(capsys, "--run", str(path), "--json")
        assert code == 0, err
        run_ids.append(json.loads(out)["run_id"])
    approved = []
    for run_id in run_ids:  # the superseded run first
        code, out, _ = run_cli(capsys, "quarantine", "list", "--run", run_id, "--json")
        (item,) = [i for i in json.loads(out) if i["record_id"] == "r0"]
        code, out, err = run_cli(capsys, "quarantine", "approve", str(item["id"]))
        assert code == 0, err
        assert "loaded into" in out
        approved.append(item["id"])
    return approved


def test_approving_twice_leaves_one_row_per_id_in_csv(tmp_path, llm_server, capsys):
    two_runs_then_approve_both(tmp_path, llm_server, capsys,
                               {"destination": "csv://out/results.csv"})
    with (tmp_path / "p" / "out" / "results.csv").open(newline="", encoding="utf-8") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    assert sorted(ids) == ["r0", "r1", "r2", "r4", "r5"]


def test_approving_twice_leaves_one_row_per_id_in_jsonl(tmp_path, llm_server, capsys):
    two_runs_then_approve_both(tmp_path, llm_server, capsys,
                               {"destination": "jsonl://out/results.jsonl"})
    loaded = read_jsonl(tmp_path / "p" / "out" / "results.jsonl")
    assert sorted(row["id"] for row in loaded) == ["r0", "r1", "r2", "r4", "r5"]
    assert {row["id"]: row["sentiment"] for row in loaded}["r0"] == "negative"


def test_approving_twice_leaves_one_row_per_id_in_sqlite(tmp_path, llm_server, capsys):
    two_runs_then_approve_both(tmp_path, llm_server, capsys,
                               {"destination": "sqlite://out/results.db", "table": "scores"})
    with sqlite3.connect(tmp_path / "p" / "out" / "results.db") as db:
        ids = [r[0] for r in db.execute('SELECT "id" FROM "scores"')]
    assert sorted(ids) == ["r0", "r1", "r2", "r4", "r5"]


def test_approving_twice_leaves_one_row_per_id_in_postgres(tmp_path, llm_server, capsys,
                                                           pg_database):
    two_runs_then_approve_both(tmp_path, llm_server, capsys,
                               {"destination": pg_database.url, "table": "scores"})
    ids = [r[0] for r in pg_database.rows('SELECT "id" FROM "scores"')]
    assert sorted(ids) == ["r0", "r1", "r2", "r4", "r5"]


def test_reprocessing_an_old_runs_record_replaces_its_row(tmp_path, llm_server, capsys):
    path = write_pipeline(tmp_path / "p", rows=rows(6), base_url=llm_server.base_url,
                          load={"mode": "replace", "destination": "jsonl://out/results.jsonl"})
    run_ids = []
    for _ in range(2):
        code, out, err = run_cli(capsys, "--run", str(path), "--json")
        run_ids.append(json.loads(out)["run_id"])
    first, second = run_ids
    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", second, "--json")
    (newer,) = [i for i in json.loads(out) if i["record_id"] == "r3"]
    assert run_cli(capsys, "quarantine", "approve", str(newer["id"]))[0] == 0  # r3 is loaded
    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", first, "--json")
    (item,) = [i for i in json.loads(out) if i["record_id"] == "r3"]
    fixed = rows(6)
    fixed[3]["reply"] = reply("positive")
    from tests.pipelines import write_csv
    write_csv(tmp_path / "p" / "reviews.csv", fixed)
    # The stored input is what is reprocessed: make the prompt answer positive for it.
    prompt = tmp_path / "p" / "prompt.j2"
    prompt.write_text('Classify.\n{{ input.text }}\nreply: {"sentiment": "positive"}\n')
    code, out, err = run_cli(capsys, "quarantine", "reprocess", str(item["id"]))
    assert code == 0 and "loaded into" in out, out + err
    loaded = read_jsonl(tmp_path / "p" / "out" / "results.jsonl")
    assert Counter(row["id"] for row in loaded)["r3"] == 1
    assert {row["id"]: row["sentiment"] for row in loaded}["r3"] == "positive"


@pytest.mark.s3
def test_an_s3_replace_destination_is_refused_in_one_line(tmp_path, llm_server, capsys, s3):
    s3.client().create_bucket(Bucket="lake")
    path = write_pipeline(tmp_path / "p", rows=rows(6), base_url=llm_server.base_url,
                          load={"mode": "replace", "destination": "s3://lake/scores/"})
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    run_id = json.loads(out)["run_id"]
    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", run_id, "--json")
    item = json.loads(out)[0]
    code, out, err = run_cli(capsys, "quarantine", "approve", str(item["id"]))
    assert "cannot replace one record's row in place" in out + err
    code, out, _ = run_cli(capsys, "quarantine", "show", str(item["id"]), "--json")
    assert json.loads(out)["status"] == "open"
