"""A good destination is never damaged: a `replace` swaps in new content only when the run ends
`success` (or `partial` with load.on_partial: publish); a run that failed, was cancelled, loaded
nothing or tripped max_rejection_rate leaves it byte for byte as it was, and a held run's
passing records can be released once, later."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from core import cli
from tests.pipelines import reply, write_csv, write_pipeline

LABELS = ["positive", "negative", "neutral"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows_for(count: int, *, bad_every: int = 0) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        expected = LABELS[i % 3]
        answer = LABELS[(i + 1) % 3] if bad_every and i % bad_every == 0 else expected
        rows.append({"id": f"r{i:04d}", "text": f"review number {i}", "expected": expected,
                     "reply": reply(answer)})
    return rows


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FILE_SINKS = {"csv": "csv://out/results.csv", "jsonl": "jsonl://out/results.jsonl",
              "json": "json://out/results.json"}


def good_file(tmp_path: Path, server, kind: str, **load) -> tuple[Path, Path, str]:
    """A replace pipeline whose first run wrote a good destination; its path and checksum."""
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=rows_for(12), base_url=server.base_url,
                              load={"destination": FILE_SINKS[kind], "mode": "replace", **load})
    code, out, err = run_cli_quiet(pipeline)
    assert code == 0, err
    destination = folder / FILE_SINKS[kind].split("://", 1)[1]
    assert destination.stat().st_size > 0
    return pipeline, destination, checksum(destination)


def run_cli_quiet(pipeline: Path, *args: str) -> tuple[int, str, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--run", str(pipeline), "--json", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("kind", sorted(FILE_SINKS))
def test_a_template_typo_leaves_a_replace_file_as_it_was(tmp_path, llm_server, capsys, kind):
    pipeline, destination, before = good_file(tmp_path, llm_server, kind)
    prompt = pipeline.parent / "prompt.j2"
    prompt.write_text(prompt.read_text().replace("input.text", "input.txet"))
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    summary = json.loads(out)
    assert summary["records"]["loaded"] == 0 and summary["records"]["quarantined"] == 12
    assert summary["status"] == "failed" and code == 1  # nothing passed: not a success
    assert "no record passed" in summary["status_reason"]
    assert checksum(destination) == before


def test_a_dead_endpoint_leaves_a_replace_file_as_it_was(tmp_path, llm_server, capsys):
    pipeline, destination, before = good_file(tmp_path, llm_server, "csv")
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--no-cache",
                             "--set", "transform.base_url=http://127.0.0.1:9/v1",
                             "--set", "transform.max_retries=0")
    summary = json.loads(out)
    assert summary["records"]["loaded"] == 0
    assert code == 1 and summary["status"] == "failed"
    assert checksum(destination) == before


def test_limit_0_touches_nothing(tmp_path, llm_server, capsys):
    pipeline, destination, before = good_file(tmp_path, llm_server, "csv")
    stat = destination.stat()
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--limit", "0")
    summary = json.loads(out)
    assert code == 0 and summary["records"]["extracted"] == 0
    assert "destination is unchanged" in err
    assert checksum(destination) == before
    assert destination.stat().st_ino == stat.st_ino  # not even rewritten


@pytest.mark.parametrize("kind", sorted(FILE_SINKS))
def test_a_tripped_gate_holds_replace_then_release_publishes_once(tmp_path, llm_server, capsys,
                                                                    kind):
    pipeline, destination, before = good_file(tmp_path, llm_server, kind)
    write_csv(pipeline.parent / "reviews.csv", rows_for(20, bad_every=2))
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json",
                             "--set", "evaluate.max_rejection_rate=0.1")
    summary = json.loads(out)
    assert code == 3 and summary["status"] == "partial"
    assert summary["records"] == {"extracted": 20, "loaded": 0, "quarantined": 10, "skipped": 10}
    assert f"loom release {summary['run_id']}" in err
    assert checksum(destination) == before

    run_id = summary["run_id"]
    code, out, err = run_cli(capsys, "release", run_id[:-2])
    assert code == 0, err
    assert "10 records loaded" in out
    after = destination.read_text()
    assert checksum(destination) != before
    ids = [line for line in after.splitlines() if "r00" in line]
    assert len(ids) == 10  # the held run's passing records, each once, replacing the old ones

    code, out, err = run_cli(capsys, "release", run_id)
    assert code == 0 and "already released" in out
    assert destination.read_text() == after
    code, out, _ = run_cli(capsys, "runs", "--json")
    (held,) = [run for run in json.loads(out) if run["run_id"] == run_id]
    assert held["records"]["loaded"] == 10 and held["records"]["skipped"] == 0
    assert held["released"] is True and held["held"] is False


def test_on_partial_publish_swaps_in_a_partial_run(tmp_path, llm_server, capsys):
    pipeline, destination, before = good_file(tmp_path, llm_server, "jsonl",
                                              on_partial="publish")
    write_csv(pipeline.parent / "reviews.csv", rows_for(20, bad_every=2))
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json",
                             "--set", "evaluate.max_rejection_rate=0.1")
    summary = json.loads(out)
    assert code == 3 and summary["records"]["loaded"] == 10
    assert len(destination.read_text().splitlines()) == 10
    code, out, err = run_cli(capsys, "release", summary["run_id"])
    assert code == 2 and "nothing to release" in err


def test_release_refuses_a_run_that_holds_nothing(tmp_path, llm_server, capsys):
    pipeline, destination, before = good_file(tmp_path, llm_server, "csv")
    code, out, _ = run_cli(capsys, "runs", "--json")
    run_id = json.loads(out)[0]["run_id"]
    code, out, err = run_cli(capsys, "release", run_id)
    assert code == 2 and err.count("\n") == 1 and "nothing to release" in err
    code, out, err = run_cli(capsys, "release", "nosuchrun")
    assert code == 2 and "no run nosuchrun" in err


def test_a_budget_stop_holds_replace_and_resume_finishes_it(tmp_path, llm_server, capsys):
    pipeline, destination, before = good_file(tmp_path, llm_server, "csv")
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--no-cache",
                             "--set", "budget.max_cost_usd=0.000001",
                             "--set", "transform.concurrency=1")
    summary = json.loads(out)
    assert code == 3 and summary["status"] == "partial"
    assert checksum(destination) == before
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--resume",
                             "--set", "budget.max_cost_usd=100")
    summary = json.loads(out)
    assert code == 0, err
    assert summary["records"]["loaded"] == 12
    assert destination.read_text().count("\n") == 13  # header + every record once


# ---------------------------------------------------------------- databases and S3


def sqlite_rows(path: Path, table: str = "scores") -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()


def test_sqlite_replace_is_held_by_a_gate_and_untouched_by_a_failure(tmp_path, llm_server,
                                                                      capsys):
    folder = tmp_path / "p"
    load = {"destination": "sqlite://out/results.db", "table": "scores", "mode": "replace"}
    pipeline = write_pipeline(folder, rows=rows_for(12), base_url=llm_server.base_url, load=load)
    code, _, err = run_cli(capsys, "--run", str(pipeline))
    assert code == 0, err
    before = sqlite_rows(folder / "out" / "results.db")
    assert len(before) == 12
    prompt = folder / "prompt.j2"
    prompt.write_text(prompt.read_text().replace("input.text", "input.txet"))
    code, _, _ = run_cli(capsys, "--run", str(pipeline))
    assert code == 1
    assert sqlite_rows(folder / "out" / "results.db") == before
    prompt.write_text(prompt.read_text().replace("input.txet", "input.text"))
    write_csv(folder / "reviews.csv", rows_for(20, bad_every=2))
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json",
                           "--set", "evaluate.max_rejection_rate=0.1")
    assert code == 3
    assert sqlite_rows(folder / "out" / "results.db") == before
    code, out, err = run_cli(capsys, "release", json.loads(out)["run_id"])
    assert code == 0, err
    assert len(sqlite_rows(folder / "out" / "results.db")) == 10


def test_postgres_replace_is_held_by_a_gate(tmp_path, llm_server, capsys, pg_database):
    folder = tmp_path / "p"
    load = {"destination": pg_database.url, "table": "scores", "mode": "replace"}
    pipeline = write_pipeline(folder, rows=rows_for(12), base_url=llm_server.base_url, load=load)
    code, _, err = run_cli(capsys, "--run", str(pipeline))
    assert code == 0, err
    before = pg_database.rows('SELECT * FROM "scores" ORDER BY 1')
    assert len(before) == 12
    prompt = folder / "prompt.j2"
    prompt.write_text(prompt.read_text().replace("input.text", "input.txet"))
    assert run_cli(capsys, "--run", str(pipeline))[0] == 1
    assert pg_database.rows('SELECT * FROM "scores" ORDER BY 1') == before
    prompt.write_text(prompt.read_text().replace("input.txet", "input.text"))
    write_csv(folder / "reviews.csv", rows_for(20, bad_every=2))
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json",
                           "--set", "evaluate.max_rejection_rate=0.1")
    assert code == 3
    assert pg_database.rows('SELECT * FROM "scores" ORDER BY 1') == before
    code, out, err = run_cli(capsys, "release", json.loads(out)["run_id"])
    assert code == 0, err
    assert len(pg_database.rows('SELECT * FROM "scores"')) == 10


@pytest.mark.s3
def test_s3_replace_is_held_by_a_gate(tmp_path, llm_server, capsys, s3):
    client = s3.client()
    client.create_bucket(Bucket="lake")

    def objects() -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket="lake", Prefix="scores/").get("Contents", [])
        return {o["Key"]: client.get_object(Bucket="lake", Key=o["Key"])["Body"].read()
                for o in listed}

    folder = tmp_path / "p"
    load = {"destination": "s3://lake/scores/", "mode": "replace"}
    pipeline = write_pipeline(folder, rows=rows_for(12), base_url=llm_server.base_url, load=load)
    code, _, err = run_cli(capsys, "--run", str(pipeline))
    assert code == 0, err
    before = objects()
    assert before
    prompt = folder / "prompt.j2"
    prompt.write_text(prompt.read_text().replace("input.text", "input.txet"))
    assert run_cli(capsys, "--run", str(pipeline))[0] == 1
    assert objects() == before
    prompt.write_text(prompt.read_text().replace("input.txet", "input.text"))
    write_csv(folder / "reviews.csv", rows_for(20, bad_every=2))
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json",
                           "--set", "evaluate.max_rejection_rate=0.1")
    assert code == 3
    assert objects() == before
    run_id = json.loads(out)["run_id"]
    code, out, err = run_cli(capsys, "release", run_id)
    assert code == 0, err
    after = objects()
    assert all(f"/{run_id}/" in key for key in after)
    lines = [line for key, body in after.items() if not key.endswith("_SUCCESS")
             for line in body.decode().splitlines() if line]
    assert len(lines) == 10


def test_a_cancelled_run_leaves_a_replace_file_as_it_was(tmp_path, llm_server, capsys):
    import asyncio

    from core.api import Workspace
    from core.engine import RunController, RunOptions
    from core.events import Progress, RunFinished

    pipeline, destination, before = good_file(tmp_path, llm_server, "csv")
    write_csv(pipeline.parent / "reviews.csv", rows_for(60))
    llm_server.latency_s = 0.02

    async def cancel_midway() -> object:
        controller = RunController()
        async with Workspace(tmp_path) as workspace:
            loaded = workspace.load(pipeline, ["transform.concurrency=1", "load.batch_size=1"])
            async for event in workspace.run(loaded, RunOptions(use_cache=False),
                                             controller=controller):
                if isinstance(event, Progress) and event.loaded >= 3:
                    controller.cancel()
                if isinstance(event, RunFinished):
                    return event.summary

    summary = asyncio.run(cancel_midway())
    assert summary.status == "cancelled" and summary.skipped > 0
    assert checksum(destination) == before
