"""Records that share an id: `extract.on_duplicate_id: quarantine` (the first one wins, the later
ones are quarantined) or `keep_last` (the last one wins, for every kind of destination), always
reported, never sent to the model twice.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from core import cli
from core.api import Workspace
from core.engine import RunController, RunOptions
from core.events import Progress, RunFinished
from tests.pipelines import read_jsonl, reply, write_pipeline

# id, the text that tells the occurrences apart; the last occurrence of each id is the winner
# for keep_last, the first for quarantine.
OCCURRENCES = [("a", "a first"), ("b", "b first"), ("a", "a second"), ("c", "c only"),
               ("b", "b second"), ("a", "a third"), ("d", "d only")]
FIRST = {"a": "a first", "b": "b first", "c": "c only", "d": "d only"}
LAST = {"a": "a third", "b": "b second", "c": "c only", "d": "d only"}
FIELDS = {"id": "id", "text": "input.text", "sentiment": "output.sentiment"}


def source_rows() -> list[dict[str, str]]:
    return [{"id": record_id, "text": text, "expected": "neutral", "reply": reply("neutral")}
            for record_id, text in OCCURRENCES]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_later_records_with_an_id_seen_before_are_quarantined_and_reported(
        tmp_path, llm_server, capsys):
    path = write_pipeline(tmp_path / "p", rows=source_rows(), base_url=llm_server.base_url,
                          load={"destination": "jsonl://out/results.jsonl", "fields": FIELDS})
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 7, "loaded": 4, "quarantined": 3, "skipped": 0}
    assert summary["duplicate_ids"] == 3
    assert ("warning: 3 records had an id an earlier record has too, first 'a' (reviews.csv:4): "
            "quarantined (extract.on_duplicate_id: quarantine; keep_last loads the last one "
            "instead)") in err
    assert llm_server.count == 4  # a duplicate never reaches the model
    loaded = {row["id"]: row["text"] for row in read_jsonl(tmp_path / "p" / "out" / "results.jsonl")}
    assert loaded == FIRST

    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", summary["run_id"], "--json")
    quarantined = json.loads(out)
    assert [(q["record_id"], q["input"]["text"]) for q in quarantined] == [
        ("a", "a second"), ("b", "b second"), ("a", "a third")]
    first = quarantined[0]
    assert (first["stage"], first["error_type"]) == ("extract", "DuplicateId")
    assert first["reason"] == ("duplicate id 'a': reviews.csv:2 has it too "
                               "(extract.on_duplicate_id: quarantine keeps the first)")


def test_rows_without_an_id_field_are_duplicates_when_they_are_the_same_row(
        tmp_path, llm_server, capsys):
    rows = [{"text": "same", "expected": "neutral", "reply": reply("neutral")}] * 3 + \
        [{"text": "other", "expected": "neutral", "reply": reply("neutral")}]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          extract={"source": "csv://reviews.csv", "id_field": None})
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["records"] == {"extracted": 4, "loaded": 2, "quarantined": 2,
                                          "skipped": 0}


def _existing_rows(kind: str, folder: Path) -> None:
    """A destination that already has a row (appending must keep it)."""
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        (out / "results.jsonl").write_text('{"id": "old", "text": "old", "sentiment": "x"}\n')
    elif kind == "csv":
        (out / "results.csv").write_text("id,text,sentiment\nold,old,x\n")
    elif kind == "json":
        (out / "results.json").write_text('[{"id": "old", "text": "old", "sentiment": "x"}]\n')
    elif kind in ("sqlite", "sqlite-upsert"):
        with sqlite3.connect(out / "dest.db") as db:
            db.execute('CREATE TABLE "reviews" ("id" TEXT, "text" TEXT, "sentiment" TEXT)')
            db.execute("INSERT INTO reviews VALUES ('old', 'old', 'x')")


def _loaded(kind: str, folder: Path, request: pytest.FixtureRequest, run_id: str) -> list[dict[str, Any]]:
    out = folder / "out"
    if kind == "jsonl":
        return read_jsonl(out / "results.jsonl")
    if kind == "csv":
        with (out / "results.csv").open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if kind == "json":
        return json.loads((out / "results.json").read_text(encoding="utf-8"))
    if kind in ("sqlite", "sqlite-upsert"):
        with sqlite3.connect(out / "dest.db") as db:
            return [{"id": r[0], "text": r[1]} for r in db.execute(
                'SELECT "id", "text" FROM "reviews" ORDER BY rowid')]
    if kind == "postgres":
        database = request.getfixturevalue("pg_database")
        return [{"id": r[0], "text": r[1]} for r in database.rows(
            'SELECT "id", "text" FROM "reviews"')]
    client = request.getfixturevalue("s3").client()
    rows: list[dict[str, Any]] = []
    for item in client.list_objects_v2(Bucket="lake", Prefix=f"dups/{run_id}/")["Contents"]:
        if item["Key"].endswith(".jsonl"):
            body = client.get_object(Bucket="lake", Key=item["Key"])["Body"].read().decode()
            rows.extend(json.loads(line) for line in body.splitlines())
    return rows


@pytest.mark.parametrize("kind", [
    "jsonl", "csv", "json", "sqlite", "sqlite-upsert",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("s3", marks=pytest.mark.s3)])
def test_keep_last_loads_exactly_the_last_record_of_each_id(tmp_path, llm_server, capsys, request,
                                                            kind):
    folder = tmp_path / kind
    load: dict[str, Any] = {"fields": FIELDS, "mode": "append"}
    if kind in ("jsonl", "csv", "json"):
        load["destination"] = f"{kind}://out/results.{kind}"
    elif kind in ("sqlite", "sqlite-upsert"):
        load.update(destination="sqlite://out/dest.db", table="reviews")
        if kind == "sqlite-upsert":
            load.update(mode="upsert", key="id")
    elif kind == "postgres":
        load.update(destination=request.getfixturevalue("pg_database").url, table="reviews")
    else:
        request.getfixturevalue("s3").client().create_bucket(Bucket="lake")
        load["destination"] = "s3://lake/dups/"
    _existing_rows(kind, folder)
    path = write_pipeline(folder, rows=source_rows(), base_url=llm_server.base_url,
                          extract={"source": "csv://reviews.csv", "id_field": "id",
                                   "on_duplicate_id": "keep_last"},
                          load=load)
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 7, "loaded": 4, "quarantined": 0, "skipped": 3}
    assert llm_server.count == 4  # the records a later one replaces are never sent
    assert "3 records had an id a later record has too, first 'a' (reviews.csv:2): skipped" in err

    rows = _loaded(kind, folder, request, summary["run_id"])
    by_id = Counter(row["id"] for row in rows)
    assert max(by_id.values()) == 1
    assert {row["id"]: row["text"] for row in rows if row["id"] != "old"} == LAST
    if kind in ("jsonl", "csv", "json", "sqlite", "sqlite-upsert"):
        assert by_id["old"] == 1  # what was there stays


def test_a_resumed_keep_last_run_still_loads_each_last_record_once(tmp_path, llm_server, capsys):
    # Many ids, each three times, the run cancelled part-way and resumed.
    rows = [{"id": f"k{i % 60:03d}", "text": f"k{i % 60:03d} take {i // 60}", "expected": "neutral",
             "reply": reply("neutral")} for i in range(180)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          extract={"source": "csv://reviews.csv", "id_field": "id",
                                   "on_duplicate_id": "keep_last", "batch_size": 20},
                          transform={"concurrency": 2, "cache": False},
                          load={"destination": "jsonl://out/results.jsonl", "fields": FIELDS})
    llm_server.latency_s = 0.02

    async def cancelled() -> Any:
        controller = RunController()
        async with Workspace(tmp_path) as workspace:
            loaded = workspace.load(path)
            async for event in workspace.run(loaded, RunOptions(), controller=controller):
                if isinstance(event, Progress) and event.transformed >= 10:
                    controller.cancel()
                if isinstance(event, RunFinished):
                    return event.summary

    first = asyncio.run(cancelled())
    assert first.status == "cancelled"
    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 180, "loaded": 60, "quarantined": 0, "skipped": 120}
    assert llm_server.count == 60  # one call per id, across both attempts
    loaded = read_jsonl(tmp_path / "p" / "out" / "results.jsonl")
    assert len(loaded) == 60
    assert all(row["text"] == f"{row['id']} take 2" for row in loaded)
