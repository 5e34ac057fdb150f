"""Attacks on "a quarantine action loads each record exactly once", with real processes.

Several `loom quarantine approve` processes at once on the same ids; a `loom quarantine approve`
or `reprocess` SIGKILLed at a named step (core.crashpoints) and then asked again; a live holder
(SIGSTOPped at a step) and a second action on its record; the run's `--set` overrides; a
quarantined record of a held run approved, then the run released.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.adversary.hostile import ROOT, Hostile, ok, prompt_text
from tests.pipelines import read_jsonl, reply, write_pipeline

FIXED_PROMPT = 'Classify this review.\n{{ input.text }}\nreply: {"sentiment": "{{ input.expected }}"}\n'


def answer(n: int, body: dict[str, Any]) -> Any:
    """The loopback model: it answers what the prompt's `reply:` line says."""
    text = prompt_text(body)
    return ok(text.split("reply: ", 1)[1].split("\n", 1)[0].strip())


def source(count: int) -> list[dict[str, str]]:
    # Every third record's answer disagrees with the truth: quarantined at evaluate.
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 3 == 0 else "positive")} for i in range(count)]


def loom_proc(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "loom_tui.cli", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def loom_run(*args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = loom_proc(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def killed_at(step: str, *args: str) -> None:
    """`loom ARGS…` that SIGKILLs itself at `step`: it must die there, not finish."""
    done = loom_run(*args, env={"LOOM_CRASH_AT": step})
    assert done.returncode == -signal.SIGKILL, f"not killed at {step}: {done.stderr[-2000:]}"


def stopped_at(step: str, home: Path, *args: str) -> subprocess.Popen[str]:
    """`loom ARGS…` frozen (SIGSTOP) at `step`: a live holder doing nothing."""
    proc = loom_proc(*args, env={"LOOM_CRASH_AT": f"{step}:stop"})
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        with open(f"/proc/{proc.pid}/stat") as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] == "T":
                return proc
        assert time.monotonic() < deadline, "never reached the step"
        time.sleep(0.02)


def store(home: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect((home / "loom.db").resolve().as_uri() + "?mode=ro", uri=True,
                         timeout=30) as db:
        return db.execute(sql, params).fetchall()


def quarantined_run(folder: Path, base_url: str, count: int = 9, *, sets: tuple[str, ...] = (),
                    **load: Any) -> tuple[Path, str, list[str]]:
    """A finished run with every third record quarantined: (pipeline, run id, their ids)."""
    pipeline = write_pipeline(folder, rows=source(count), base_url=base_url,
                              transform={"cache": False},
                              load={"destination": "jsonl://out/results.jsonl", **load})
    done = loom_run("--run", str(pipeline), "--json",
                    *[arg for item in sets for arg in ("--set", item)])
    summary = json.loads(done.stdout)
    assert summary["records"]["quarantined"] == (count + 2) // 3, done.stderr
    home = Path(os.environ["LOOM_HOME"])
    ids = [str(q) for (q,) in store(home, "SELECT id FROM quarantined_records WHERE run_id = ? "
                                          "ORDER BY id", summary["run_id"])]
    return pipeline, summary["run_id"], ids


def written_ids(pipeline: Path, name: str = "results.jsonl") -> Counter[str]:
    path = pipeline.parent / "out" / name
    return Counter(row["id"] for row in read_jsonl(path)) if path.exists() else Counter()


def statuses(home: Path, ids: list[str]) -> list[str]:
    return [store(home, "SELECT status FROM quarantined_records WHERE id = ?", int(i))[0][0]
            for i in ids]


# ---------------------------------------------------------------- several processes at once


@pytest.mark.parametrize("mode", ["append", "replace"])
def test_three_processes_approving_the_same_records_load_each_once(tmp_path, loom_home, mode):
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url, 30, mode=mode)
    before = written_ids(pipeline)
    racers = [loom_proc("quarantine", "approve", *ids, "--json") for _ in range(3)]
    answers = []
    for proc in racers:
        out, err = proc.communicate(timeout=120)
        answers.append((proc.returncode, json.loads(out) if out.strip() else err))
    after = written_ids(pipeline)
    added = after - before
    print(f"\n{mode}: 3 processes approving {len(ids)} records; rows added per id: "
          f"{sorted(Counter(added.values()).items())}; exits {[a[0] for a in answers]}")
    assert set(added) == {f"r{i}" for i in range(0, 30, 3)}
    assert max(added.values()) == 1, f"loaded more than once: {added}"
    assert statuses(loom_home, ids) == ["approved"] * len(ids)
    loaded_by = Counter()
    for code, results in answers:
        assert isinstance(results, list), results
        for result in results:
            if result["loaded"]:
                loaded_by[result["id"]] += 1
            else:  # one line, saying why nothing was done
                assert result["message"] in ("already approved; nothing done",) or \
                    result["message"].startswith("being approved by pid "), result
                assert "\n" not in result["message"]
    assert loaded_by == Counter({int(i): 1 for i in ids})
    # Each row of the store's actions: one approval per record.
    assert store(loom_home, "SELECT count(*) FROM quarantine_actions")[0][0] == len(ids)
    leftovers = [p.name for p in (pipeline.parent / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_an_approved_record_approved_again_says_so_and_exits_0(tmp_path, loom_home):
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url)
    first = loom_run("quarantine", "approve", ids[0])
    assert first.returncode == 0, first.stderr
    again = loom_run("quarantine", "approve", ids[0])
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{ids[0]}: approved already approved; nothing done"
    assert written_ids(pipeline)["r0"] == 1


# ---------------------------------------------------------------- kill -9 at a step, then again


@pytest.mark.parametrize("destination", ["jsonl-append", "jsonl-replace", "sqlite-append"])
def test_approve_killed_after_the_destination_committed_then_again_loads_once(
        tmp_path, loom_home, destination):
    kind, mode = destination.split("-")
    load = {"mode": mode}
    if kind == "sqlite":
        load.update(destination="sqlite://out/dest.db", table="reviews")
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url, **load)
    killed_at("quarantine:committed", "quarantine", "approve", *ids)
    assert statuses(loom_home, ids) == ["open"] * len(ids)  # the store had not noted it
    again = loom_run("quarantine", "approve", *ids, "--json")
    assert again.returncode == 0, again.stderr
    if kind == "sqlite":
        with sqlite3.connect(pipeline.parent / "out" / "dest.db") as db:
            counts = Counter(r[0] for r in db.execute('SELECT "id" FROM "reviews"'))
    else:
        counts = written_ids(pipeline)
    assert [counts[f"r{i}"] for i in (0, 3, 6)] == [1, 1, 1], counts
    assert statuses(loom_home, ids) == ["approved"] * len(ids)


def test_approve_killed_before_the_commit_then_again_loads_once(tmp_path, loom_home):
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url, mode="append")
    killed_at("quarantine:committing", "quarantine", "approve", *ids)
    assert written_ids(pipeline)["r0"] == 0
    again = loom_run("quarantine", "approve", *ids)
    assert again.returncode == 0, again.stderr
    assert [written_ids(pipeline)[f"r{i}"] for i in (0, 3, 6)] == [1, 1, 1]


@pytest.mark.parametrize("step", ["quarantine:answered", "quarantine:committed"])
def test_reprocess_killed_midway_then_again_loads_once_and_pays_once(tmp_path, loom_home, step):
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url, mode="append")
        (pipeline.parent / "prompt.j2").write_text(FIXED_PROMPT, encoding="utf-8")
        calls = server.requests
        killed_at(step, "quarantine", "reprocess", ids[0])
        assert server.requests == calls + 1
        again = loom_run("quarantine", "reprocess", ids[0], "--json")
        assert again.returncode == 0, again.stderr
        [result] = json.loads(again.stdout)
        assert result["loaded"] and result["status"] == "reprocessed"
        assert server.requests == calls + 1, "the model was paid twice for one answer"
    assert written_ids(pipeline)["r0"] == 1
    assert statuses(loom_home, ids[:1]) == ["reprocessed"]


# ---------------------------------------------------------------- a live holder


def test_a_live_approval_holds_its_record_against_discard_and_approve(tmp_path, loom_home):
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url, mode="append")
    holder = stopped_at("quarantine:committing", loom_home, "quarantine", "approve", ids[0])
    try:
        for action in ("discard", "approve"):
            other = loom_run("quarantine", action, ids[0])
            assert other.returncode == 1, other.stderr
            line, = other.stdout.strip().splitlines()
            assert f"being approved by pid {holder.pid} on " in line, line
    finally:
        holder.send_signal(signal.SIGCONT)
    holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert statuses(loom_home, ids[:1]) == ["approved"]
    late = loom_run("quarantine", "discard", ids[0])
    assert late.returncode == 1 and "already approved; nothing done" in late.stdout
    assert written_ids(pipeline)["r0"] == 1


# ---------------------------------------------------------------- the run's --set overrides


def test_actions_load_into_the_runs_own_set_destination(tmp_path, loom_home):
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(
            tmp_path / "p", server.base_url, mode="append",
            sets=("load.destination=jsonl://out/q.jsonl",))
        assert written_ids(pipeline, "q.jsonl") and not written_ids(pipeline)
        approved = loom_run("quarantine", "approve", ids[0])
        assert approved.returncode == 0, approved.stderr
        assert "q.jsonl" in approved.stdout
        (pipeline.parent / "prompt.j2").write_text(FIXED_PROMPT, encoding="utf-8")
        again = loom_run("quarantine", "reprocess", ids[1])
        assert again.returncode == 0, again.stderr
    assert written_ids(pipeline) == Counter()  # the YAML's destination was never written
    assert written_ids(pipeline, "q.jsonl")["r0"] == 1
    assert written_ids(pipeline, "q.jsonl")["r3"] == 1


def test_reprocess_evaluates_with_the_runs_set_evaluators(tmp_path, loom_home):
    """The run's --set made the gate lenient (any_pass): a reprocess judges as the run did."""
    with Hostile(answer) as server:
        folder = tmp_path / "p"
        rows = [{"id": "a", "text": "t", "expected": "positive", "reply": "not json"},
                {"id": "b", "text": "t", "expected": "positive", "reply": reply("positive")}]
        pipeline = write_pipeline(folder, rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "max_retries": 0},
                                  load={"destination": "jsonl://out/results.jsonl",
                                        "mode": "append"})
        done = loom_run("--run", str(pipeline), "--json", "--set",
                        "evaluate.quality_gate=any_pass")
        assert json.loads(done.stdout)["records"]["quarantined"] == 1, done.stderr
        (qid,), = store(loom_home, "SELECT id FROM quarantined_records")
        # Now the model answers "negative" for a: the YAML's all_pass gate would refuse it
        # (exact_match fails), the run's any_pass passes it (one_of holds).
        (folder / "prompt.j2").write_text('x\nreply: {"sentiment": "negative"}\n',
                                          encoding="utf-8")
        again = loom_run("quarantine", "reprocess", str(qid), "--json")
        assert again.returncode == 0, again.stderr + again.stdout
    assert written_ids(pipeline)["a"] == 1


# ---------------------------------------------------------------- a held run's approvals


def test_a_record_approved_from_a_held_run_survives_its_release(tmp_path, loom_home):
    """Approving a quarantined record of a held `replace` run, then releasing the run: the
    release replaces the destination with the run's records, the approved one among them."""
    def handler(n, body):
        text = prompt_text(body)
        if "text 4\n" in text:
            return ok(reply("negative"))  # quarantined at evaluate, with an output
        return answer(n, body)

    rows = [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("positive")} for i in range(10)]
    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False},
                                  evaluate={"max_rejection_rate": 0.05},
                                  load={"destination": "jsonl://out/results.jsonl",
                                        "mode": "replace"})
        done = loom_run("--run", str(pipeline), "--json")
    summary = json.loads(done.stdout)
    assert summary["status"] == "partial", done.stderr
    (qid,), = store(loom_home, "SELECT id FROM quarantined_records")
    approved = loom_run("quarantine", "approve", str(qid))
    assert approved.returncode == 0, approved.stderr
    released = loom_run("release", summary["run_id"])
    assert released.returncode == 0, released.stderr
    assert written_ids(pipeline) == Counter({f"r{i}": 1 for i in range(10)})


# ---------------------------------------------------------------- the same on a PostgreSQL store


@pytest.mark.postgres
def test_on_a_postgres_store_racing_and_killed_approvals_load_each_once(tmp_path, loom_home,
                                                                        pg_database,
                                                                        monkeypatch):
    monkeypatch.setenv("LOOM_STORE_URL", pg_database.url)
    with Hostile(answer) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=source(30), base_url=server.base_url,
                                  transform={"cache": False},
                                  load={"destination": "jsonl://out/results.jsonl",
                                        "mode": "append"})
        done = loom_run("--run", str(pipeline), "--json")
        assert json.loads(done.stdout)["records"]["quarantined"] == 10, done.stderr
    ids = [str(q) for (q,) in pg_database.rows("SELECT id FROM quarantined_records ORDER BY id")]
    killed_at("quarantine:committed", "quarantine", "approve", *ids[:2])
    racers = [loom_proc("quarantine", "approve", *ids, "--json") for _ in range(3)]
    for proc in racers:
        proc.communicate(timeout=120)
    added = written_ids(pipeline) - Counter({f"r{i}": 1 for i in range(30) if i % 3})
    print(f"\npostgres store: 1 approval killed after its commit, then 3 processes racing; "
          f"rows per approved id: {sorted(Counter(added.values()).items())}")
    assert added == Counter({f"r{i}": 1 for i in range(0, 30, 3)})
    assert pg_database.rows("SELECT DISTINCT status FROM quarantined_records") == [["approved"]]
    assert pg_database.rows("SELECT count(*) FROM quarantine_actions") == [["10"]]


@pytest.mark.s3
def test_approve_into_s3_killed_after_its_commit_then_again_loads_once(tmp_path, loom_home, s3):
    """S3 parts are withdrawn, not trusted: the next approval removes the killed one's parts
    (under its claim's prefix) and writes the records once."""
    s3.client().create_bucket(Bucket="lake")
    with Hostile(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url, mode="append",
                                                destination="s3://lake/reviews/")
    killed_at("quarantine:committed", "quarantine", "approve", *ids)
    again = loom_run("quarantine", "approve", *ids)
    assert again.returncode == 0, again.stderr
    client = s3.client()
    written: Counter[str] = Counter()
    for item in client.list_objects_v2(Bucket="lake", Prefix="reviews/").get("Contents", []):
        if item["Key"].endswith(".jsonl"):
            body = client.get_object(Bucket="lake", Key=item["Key"])["Body"].read().decode()
            written.update(json.loads(line)["id"] for line in body.splitlines())
    assert [written[f"r{i}"] for i in (0, 3, 6)] == [1, 1, 1], written
    assert statuses(loom_home, ids) == ["approved"] * len(ids)
