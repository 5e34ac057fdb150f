"""`--resume` beyond the crash: cancelled and failed runs, a budget raised, what is refused and
why, and the moment between a file's rename and the store hearing of it.

(kill -9 itself is in test_crash_resume.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core import cli
from core.api import Workspace
from core.claims import start_time
from core.engine import RunController, RunOptions
from core.events import Progress, RunFinished, RunResumed
from core.resume import STALE_AFTER_S, host_name
from core.store import RunStart, Store
from core.store.models import utcnow
from tests.pipelines import read_jsonl, reply, write_pipeline

LABELS = ["positive", "negative", "neutral"]


def rows(count: int, *, bad_every: int = 0) -> list[dict[str, str]]:
    out = []
    for i in range(count):
        expected = LABELS[i % 3]
        answer = LABELS[(i + 1) % 3] if bad_every and i % bad_every == 1 else expected
        out.append({"id": f"r{i:04d}", "text": f"review {i}", "expected": expected,
                    "reply": reply(answer)})
    return out


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cancel_after(path: Path, answered: int, **overrides: Any) -> Any:
    """Run the pipeline and cancel it (as ctrl+c or the TUI would) once `answered` records have
    their answer; returns the summary."""
    return asyncio.run(_cancel_after(path, answered, overrides.get("set", [])))


async def _cancel_after(path: Path, answered: int, overrides: list[str]) -> Any:
    controller = RunController()
    summary = None
    async with Workspace(path.parent) as workspace:
        loaded = workspace.load(path, overrides)
        async for event in workspace.run(loaded, RunOptions(overrides=overrides),
                                         controller=controller):
            if isinstance(event, Progress) and event.transformed >= answered:
                controller.cancel()
            if isinstance(event, RunFinished):
                summary = event.summary
    assert summary is not None and summary.status == "cancelled"
    assert summary.skipped > 0
    return summary


def ids_of(path: Path) -> Counter[str]:
    return Counter(row["id"] for row in read_jsonl(path))


def passing(source: list[dict[str, str]], bad_every: int = 0) -> set[str]:
    return {row["id"] for i, row in enumerate(source) if not (bad_every and i % bad_every == 1)}


def test_a_cancelled_append_run_resumes_and_pays_only_for_what_never_ran(
        tmp_path, llm_server, capsys):
    llm_server.latency_s = 0.02
    source = rows(200, bad_every=9)
    path = write_pipeline(tmp_path / "p", rows=source, base_url=llm_server.base_url,
                          transform={"concurrency": 2, "cache": False})
    first = cancel_after(path, 20)
    destination = tmp_path / "p" / "out" / "results.jsonl"
    assert sum(ids_of(destination).values()) == first.loaded  # what loaded is published
    calls_before = llm_server.count

    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["run_id"] == first.run_id and summary["attempts"] == 2
    assert summary["records"] == {"extracted": 200, "loaded": len(passing(source, 9)),
                                  "quarantined": 200 - len(passing(source, 9)), "skipped": 0}
    # Cancelling let the calls in flight finish: nothing answered is asked again.
    assert llm_server.count == 200
    assert llm_server.count - calls_before == 200 - first.loaded - first.quarantined
    counts = ids_of(destination)
    assert max(counts.values()) == 1 and set(counts) == passing(source, 9)
    assert f"resuming run {first.run_id} (attempt 2): {first.loaded} loaded" in err


def test_a_cancelled_replace_run_loads_its_answers_from_the_store(tmp_path, llm_server, capsys):
    llm_server.latency_s = 0.02
    source = rows(150)
    path = write_pipeline(tmp_path / "p", rows=source, base_url=llm_server.base_url,
                          transform={"concurrency": 2, "cache": False},
                          load={"destination": "jsonl://out/results.jsonl", "mode": "replace"})
    destination = tmp_path / "p" / "out" / "results.jsonl"
    destination.parent.mkdir(parents=True)
    destination.write_text('{"id": "stale"}\n', encoding="utf-8")
    first = cancel_after(path, 20)
    # All or nothing: the cancelled run left the destination as it was, its answers kept.
    assert destination.read_text(encoding="utf-8") == '{"id": "stale"}\n'
    assert first.loaded == 0
    answered = llm_server.count

    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--json")
    assert code == 0, err
    assert llm_server.count == 150  # the answers of the cancelled attempt are not asked again
    assert llm_server.count - answered == 150 - answered
    assert "to load from their stored answers without a call" in err
    counts = ids_of(destination)
    assert max(counts.values()) == 1 and set(counts) == passing(source)
    assert json.loads(out)["records"]["loaded"] == 150


def test_a_failed_run_resumes_once_the_cause_is_fixed(tmp_path, llm_server, capsys):
    source = rows(60)
    path = write_pipeline(tmp_path / "p", rows=source, base_url=llm_server.base_url,
                          transform={"concurrency": 1, "cache": False})
    llm_server.script(["ok"] * 25 + ["401"])  # the key is revoked mid-run: the run stops
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    failed = json.loads(out)
    assert code == 1 and failed["status"] == "failed" and failed["records"]["skipped"] > 0
    assert "401" in failed["status_reason"]
    calls_first = llm_server.count  # 25 answers, the 401, and any call in flight beside it

    code, out, err = run_cli(capsys, "--run", str(path), "--resume", failed["run_id"], "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "success" and summary["records"]["loaded"] == 60
    # Paid again: only the records without a stored answer (the 401's, and any in flight).
    assert llm_server.count - calls_first == 60 - 25
    counts = ids_of(tmp_path / "p" / "out" / "results.jsonl")
    assert max(counts.values()) == 1 and len(counts) == 60


def test_a_budget_stop_resumes_with_a_larger_budget(tmp_path, llm_server, capsys):
    source = rows(40)
    path = write_pipeline(tmp_path / "p", rows=source, base_url=llm_server.base_url,
                          transform={"concurrency": 1, "cache": False, "max_tokens": 20},
                          budget={"max_cost_usd": 0.0001})
    code, out, _ = run_cli(capsys, "--run", str(path), "--json")
    stopped = json.loads(out)
    assert code == 3 and stopped["status"] == "partial" and stopped["records"]["skipped"] > 0
    spent = stopped["cost_usd"]

    raised = write_pipeline(tmp_path / "p", base_url=llm_server.base_url,
                            transform={"concurrency": 1, "cache": False, "max_tokens": 20},
                            budget={"max_cost_usd": 1.0})
    code, out, err = run_cli(capsys, "--run", str(raised), "--resume", stopped["run_id"], "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"]["loaded"] == 40 and summary["records"]["skipped"] == 0
    assert summary["cost_usd"] > spent  # the whole run's cost, both attempts
    assert llm_server.count == 40


# ---------------------------------------------------------------- what is refused


def test_a_changed_prompt_is_refused_unless_forced(tmp_path, llm_server, capsys):
    llm_server.latency_s = 0.02
    path = write_pipeline(tmp_path / "p", rows=rows(200), base_url=llm_server.base_url,
                          transform={"concurrency": 2})
    first = cancel_after(path, 20)
    prompt = tmp_path / "p" / "prompt.j2"
    prompt.write_text("Be terse.\n" + prompt.read_text(encoding="utf-8"), encoding="utf-8")

    code, out, err = run_cli(capsys, "--run", str(path), "--resume")
    assert code == 2 and out == ""
    assert err == (f"error: cannot resume run {first.run_id}: the pipeline changed since it started "
                   f"(the prompt prompt.j2 was edited); run it afresh, or resume anyway with "
                   f"--force\n")

    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--force", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["run_id"] == first.run_id and summary["records"]["loaded"] == 200
    assert "warning: resumed with --force although the pipeline changed" in err


def test_a_changed_setting_is_named_and_operational_ones_are_not(tmp_path, llm_server, capsys):
    llm_server.latency_s = 0.02
    path = write_pipeline(tmp_path / "p", rows=rows(200), base_url=llm_server.base_url,
                          transform={"concurrency": 2})
    first = cancel_after(path, 20, set=["transform.max_tokens=64"])

    # The run started with --set transform.max_tokens=64: resuming applies it again by itself.
    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--set",
                             "transform.temperature=0.7")
    assert code == 2
    assert "transform.temperature: absent then, 0.7 now" in err
    assert "\n" not in err.rstrip("\n")

    # Concurrency and the budget shape how a run goes, not its results: no refusal.
    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--json", "--set",
                             "transform.max_tokens=64", "--set", "transform.concurrency=3",
                             "--set", "budget.max_cost_usd=5")
    assert code == 0, err
    assert json.loads(out)["run_id"] == first.run_id


def test_nothing_to_resume_and_usage_errors_are_one_line_exit_2(tmp_path, llm_server, capsys):
    path = write_pipeline(tmp_path / "p", rows=rows(5), base_url=llm_server.base_url)
    code, _, err = run_cli(capsys, "--run", str(path), "--resume")
    assert (code, err) == (2, "error: --resume: pipeline test_pipeline has no unfinished run "
                              "(running with its process gone, or cancelled or failed with "
                              "records left)\n")
    code, out, _ = run_cli(capsys, "--run", str(path), "--json")
    run_id = json.loads(out)["run_id"]
    code, _, err = run_cli(capsys, "--run", str(path), "--resume", run_id)
    assert (code, err) == (2, f"error: --resume: run {run_id} finished (success): there is "
                              f"nothing to resume\n")
    code, _, err = run_cli(capsys, "--run", str(path), "--resume", "nope-123")
    assert (code, err) == (2, "error: --resume nope-123: there is no such run\n")
    for args, message in ((["--run", str(path), "--force"], "--force goes with --resume"),
                          (["--resume"], "--resume needs --run PIPELINE"),
                          (["--run", str(path), "--resume", "--estimate"],
                           "--estimate and --resume do not go together")):
        with pytest.raises(SystemExit) as exited:
            cli.main(args)
        assert exited.value.code == 2 and message in capsys.readouterr().err


async def _a_running_run(pipeline: Path, *, pid: int, host: str, age_s: float,
                         process_started: str | None = None) -> str:
    """A `running` row as a live (or dead) process would have left it (`process_started`: the
    process's start time the run noted; None: a run from before Loom noted it)."""
    async with await Store.open() as store:
        await store.record_pipeline("test_pipeline", "1", "", {}, str(pipeline))
        started = utcnow() - timedelta(seconds=age_s)
        run_id = f"20260101-000000-{pid:06x}"[:22]
        await store.start_run(RunStart(
            run_id=run_id, pipeline="test_pipeline", pipeline_version="1",
            pipeline_path=str(pipeline), started_at=started, config={}, model="gpt-4o-mini",
            provider="openai_compatible", prompt_hash="x", system_hash=None, context_hashes={},
            params={}, options={"pid": pid, "host": host,
                                **({"process_started": process_started}
                                   if process_started is not None else {})},
            source="csv://reviews.csv",
            destination="jsonl://out/results.jsonl"))
    return run_id


def test_a_run_whose_process_is_alive_is_not_resumed(tmp_path, llm_server, capsys):
    path = write_pipeline(tmp_path / "p", rows=rows(5), base_url=llm_server.base_url)
    run_id = asyncio.run(_a_running_run(path, pid=os.getpid(), host=host_name(), age_s=0))
    code, _, err = run_cli(capsys, "--run", str(path), "--resume")
    assert code == 2
    assert err.startswith(f"error: --resume: run {run_id} is still running (pid {os.getpid()} on "
                          f"{host_name()}, last heartbeat")

    async def unfinished() -> list[Any]:
        async with Workspace(tmp_path) as workspace:
            return await workspace.unfinished_runs()

    assert asyncio.run(unfinished()) == []  # nothing the TUI could resume


async def test_dead_runs_are_found_by_pid_here_and_by_heartbeat_elsewhere(tmp_path, llm_server):
    path = write_pipeline(tmp_path / "p", rows=rows(5), base_url=llm_server.base_url)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    here_dead = await _a_running_run(path, pid=int(gone.stdout), host=host_name(), age_s=1)
    elsewhere_fresh = await _a_running_run(path, pid=2, host="another-machine", age_s=1)
    elsewhere_stale = await _a_running_run(path, pid=3, host="another-machine",
                                           age_s=STALE_AFTER_S + 5)
    async with Workspace(tmp_path) as workspace:
        unfinished = {run.run_id for run in await workspace.unfinished_runs()}
        assert unfinished == {here_dead, elsewhere_stale}
        fresh = await workspace.get_run(elsewhere_fresh)
        assert "is still running (pid 2 on another-machine" in workspace.resume_problem(fresh)


async def test_a_run_whose_pid_now_belongs_to_another_process_is_resumed_at_once(
        tmp_path, llm_server):
    """A run killed moments ago (its heartbeat fresh) whose pid the system gave to another
    process since: the start time the run noted is not that process's, so the run is dead and
    resumable now, not once its heartbeat is STALE_AFTER_S old."""
    path = write_pipeline(tmp_path / "p", rows=rows(5), base_url=llm_server.base_url)
    mine = start_time(os.getpid())
    assert mine, "the system does not say when a process started"
    reused = await _a_running_run(path, pid=os.getpid(), host=host_name(), age_s=1,
                                  process_started=str(int(mine) + 1))
    async with Workspace(tmp_path) as workspace:
        run = await workspace.get_run(reused)
        assert workspace.resume_problem(run) is None
        assert {r.run_id for r in await workspace.unfinished_runs()} == {reused}
    live = await _a_running_run(path, pid=os.getppid(), host=host_name(), age_s=1,
                                process_started=start_time(os.getppid()))
    async with Workspace(tmp_path) as workspace:
        run = await workspace.get_run(live)
        assert "is still running" in (workspace.resume_problem(run) or "")
        assert {r.run_id for r in await workspace.unfinished_runs()} == {reused}


async def test_a_resumed_run_notes_its_process_start_time(tmp_path, llm_server):
    path = write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    async with Workspace(path.parent) as workspace:
        summary = None
        async for event in workspace.run(workspace.load(path, []), RunOptions()):
            if isinstance(event, RunFinished):
                summary = event.summary
        assert summary is not None
        run = await workspace.get_run(summary.run_id)
    assert run.options["pid"] == os.getpid()
    assert run.options["process_started"] == start_time(os.getpid())


async def test_two_resumers_of_one_run_cannot_both_claim_it(tmp_path, llm_server):
    path = write_pipeline(tmp_path / "p", rows=rows(5), base_url=llm_server.base_url)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    run_id = await _a_running_run(path, pid=int(gone.stdout), host=host_name(), age_s=1)
    async with await Store.open() as store:
        run = await store.get_run(run_id)
        claims = [await store.claim_run(run_id, status=run.status, updated_at=run.updated_at,
                                        options={"pid": os.getpid()}) for _ in range(2)]
    assert claims == [2, None]


# ---------------------------------------------------------------- between rename and store


def _pretend_the_commit_was_interrupted(home: Path, run_id: str, token: str) -> None:
    """What the store holds when a process dies after the file's rename began (and perhaps
    ended) but before it said `committed`: passed rows, `committing` with the file's token, a
    pid that is gone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    with sqlite3.connect(home / "loom.db") as db:
        db.execute("UPDATE record_results SET outcome = 'passed' WHERE run_id = ? AND "
                   "outcome = 'loaded'", (run_id,))
        options = json.loads(db.execute("SELECT options FROM pipeline_runs WHERE run_id = ?",
                                        (run_id,)).fetchone()[0])
        options.update(pid=int(gone.stdout), host=host_name())
        db.execute("UPDATE pipeline_runs SET status = 'running', finished_at = NULL, "
                   "commit_state = 'committing', commit_token = ?, options = ? WHERE run_id = ?",
                   (token, json.dumps(options), run_id))


def _identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


@pytest.mark.parametrize("renamed", [True, False], ids=["renamed", "not-renamed"])
def test_a_crash_between_the_rename_and_the_store_loads_nothing_twice(
        tmp_path, llm_server, loom_home, capsys, renamed):
    source = rows(30)
    path = write_pipeline(tmp_path / "p", rows=source, base_url=llm_server.base_url,
                          load={"destination": "jsonl://out/results.jsonl", "mode": "append"})
    destination = tmp_path / "p" / "out" / "results.jsonl"
    destination.parent.mkdir(parents=True)
    destination.write_text('{"id": "earlier"}\n', encoding="utf-8")
    before = destination.read_bytes()
    code, out, _ = run_cli(capsys, "--run", str(path), "--json")
    run_id = json.loads(out)["run_id"]
    if renamed:
        token = _identity(destination)  # the staged file is the destination now
    else:
        token = "0:0:0:0"  # the staged file never got there: the destination is as before
        destination.write_bytes(before)
    _pretend_the_commit_was_interrupted(loom_home, run_id, token)
    published = destination.read_bytes()
    calls = llm_server.count

    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--json")
    assert code == 0, err
    assert llm_server.count == calls  # every answer is in the store
    summary = json.loads(out)
    assert summary["records"]["loaded"] == 30 and summary["status"] == "success"
    counts = ids_of(destination)
    assert counts["earlier"] == 1 and max(counts.values()) == 1 and len(counts) == 31
    if renamed:
        assert destination.read_bytes() == published  # nothing rewritten, nothing appended


# ---------------------------------------------------------------- the API the TUI calls


async def test_the_api_lists_unfinished_runs_and_resumes_one(tmp_path, llm_server):
    llm_server.latency_s = 0.01
    llm_server.latency_s = 0.02
    path = write_pipeline(tmp_path / "p", rows=rows(200), base_url=llm_server.base_url,
                          transform={"concurrency": 2})
    first = await _cancel_after(path, 20, [])
    events = []
    async with Workspace(tmp_path) as workspace:
        (unfinished,) = await workspace.unfinished_runs()
        assert unfinished.run_id == first.run_id and workspace.resume_problem(unfinished) is None
        loaded, options = await workspace.prepare_resume(path, unfinished.run_id)
        async for event in workspace.run(loaded, options):
            events.append(event)
        assert await workspace.unfinished_runs() == []
        run = await workspace.get_run(first.run_id)
    (resumed,) = [e for e in events if isinstance(e, RunResumed)]
    assert resumed.attempt == 2 and resumed.loaded == first.loaded
    (finished,) = [e for e in events if isinstance(e, RunFinished)]
    assert finished.summary.status == "success" and finished.summary.loaded == 200
    assert (run.status, run.attempts, run.loaded) == ("success", 2, 200)


def test_a_resume_that_fails_before_it_settles_keeps_the_run_resumable(
        tmp_path, llm_server, capsys):
    llm_server.latency_s = 0.02
    source = rows(200)
    path = write_pipeline(tmp_path / "p", rows=source, base_url=llm_server.base_url,
                          transform={"concurrency": 2, "cache": False},
                          load={"destination": "sqlite://out/dest.db", "table": "reviews"})
    first = cancel_after(path, 20)
    database = tmp_path / "p" / "out" / "dest.db"
    with sqlite3.connect(database) as db:  # someone broke the ledger
        db.execute("INSERT INTO loom_load_ledger VALUES (?, 'reviews', 'not json', 'now')",
                   (first.run_id,))

    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--json")
    assert code == 1, err
    failed = json.loads(out)
    assert failed["status"] == "failed" and "cannot read loom_load_ledger" in failed["status_reason"]
    assert failed["records"] == {"extracted": first.extracted, "loaded": first.loaded,
                                 "quarantined": first.quarantined, "skipped": first.skipped}

    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM loom_load_ledger")
    code, out, err = run_cli(capsys, "--run", str(path), "--resume", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["attempts"] == 3 and summary["records"]["loaded"] == 200
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*), count(DISTINCT id) FROM reviews").fetchone() == (200, 200)
