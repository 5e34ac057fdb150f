"""Attacks on "loaded exactly once" and "paid at most once" across kill -9 and --resume, with
real processes and a loopback OpenAI-style server of the test's own that counts what it
receives."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.adversary.hostile import ROOT, ok, prompt_text
from tests.pipelines import reply, write_pipeline


class SlowAcceptServer:
    """An OpenAI-style server that closes every connection after its answer (so each call
    needs a new one) and, while `slow` is set, accepts a connection only every `gap_s` with
    a backlog of one: calls wait in connect(), not yet sent. Counts every request it read."""

    def __init__(self, gap_s: float = 0.3) -> None:
        self.requests = 0
        self.slow = threading.Event()
        self.slow.set()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                if length == 0 or not body:
                    return
                with outer._lock:
                    outer.requests += 1
                text = prompt_text(body)
                _, _, payload = ok(text.split("reply: ", 1)[1].split("\n", 1)[0].strip())
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            request_queue_size = 1
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                if outer.slow.is_set():
                    time.sleep(gap_s)
                return super().get_request()

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "SlowAcceptServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _loom(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "loom_tui.cli", *args], cwd=ROOT,
                            env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_calls_that_never_left_the_process_are_not_counted_as_made_and_repeated(tmp_path):
    """Promise: "paid for at most once … `llm.calls` is every call the run made across its
    attempts, `llm.calls_repeated` those made twice" (docs/explanation/guarantees.md; the
    resume example counts the calls in flight at the server).

    Did: a server that needs a new connection per call and accepts one only every 0.3 s
    (backlog 1), so of the 8 calls a run has in flight most are still in connect(): not one
    byte of them has reached the server. kill -9 the run after the server has read 6
    requests, let the server drain what it had, then `--resume` against a fast server, and
    compare the summary with the requests the server read.

    Happened: the summary counts every call the journal marked `sent` — written before the
    request goes out (core/llm/client.py: `journal.sent(...)` then
    `await self.provider.complete(request)`) — so calls that never left the killed process
    are reported as made and as repeated: llm.calls and llm.calls_repeated exceed what the
    server ever received."""
    rows = [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("positive")} for i in range(40)]
    with SlowAcceptServer() as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8, "timeout_s": 30})
        proc = _loom("--run", str(pipeline), "--json")
        deadline = time.monotonic() + 40
        while server.requests < 6:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        server.slow.clear()
        time.sleep(1.5)  # whatever had reached the server's backlog is read now
        at_kill = server.requests
        resumed = _loom("--run", str(pipeline), "--resume", "--json")
        out, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, err[-2000:]
        summary = json.loads(out.strip().splitlines()[-1])
        received = server.requests
    assert summary["records"]["loaded"] == 40
    made_after = received - at_kill
    assert summary["llm"]["calls_this_attempt"] == made_after
    print(f"\nserver read {received} requests ({at_kill} before the resume); summary: "
          f"calls {summary['llm']['calls']}, repeated {summary['llm']['calls_repeated']}")
    assert summary["llm"]["calls"] == received, (
        f"summary says {summary['llm']['calls']} calls "
        f"({summary['llm']['calls_repeated']} repeated), the server received {received}")
    assert summary["llm"]["calls_repeated"] == received - 40


def test_two_approvals_into_one_replace_file_at_once_keep_both_records(tmp_path, loom_home):
    """Promise: "Quarantine actions load exactly once … of several at once (processes, the
    workbench) one acts on each record" and "Runs writing one file at once each add their
    rows (CSV, JSON Lines, JSON; append or replace)" (docs/explanation/guarantees.md). An
    approved record is loaded: it is at the destination.

    Did: a `replace` JSON Lines run with 10 of 30 records quarantined. `loom quarantine
    approve A` frozen (SIGSTOP, core.crashpoints) at `quarantine:committing`, holding the
    destination's lock; meanwhile `loom quarantine approve B` (another record of the run)
    starts, then A is let go (SIGCONT). Both say loaded.

    Happened: the file ends with B's row but not A's: a replace file's approval copies the
    file's rows (core/quarantine.py `_rewrite_without`, called before `prepare_commit` takes
    the lock) and renames its copy over the file, so the second approval's copy, read
    before the first one's rename, puts back the file without the first one's record —
    which the store says is approved and loaded."""
    from tests.adversary.test_quarantine_attacks import (Hostile as _H, answer, loom_proc,
                                                         quarantined_run, statuses,
                                                         stopped_at, written_ids)
    with _H(answer) as server:
        pipeline, run_id, ids = quarantined_run(tmp_path / "p", server.base_url, 30,
                                                mode="replace")
    before = written_ids(pipeline)
    assert len(before) == 20
    first, second = ids[0], ids[1]
    held = stopped_at("quarantine:committing", loom_home, "quarantine", "approve", first,
                      "--json")
    out_dir = pipeline.parent / "out"
    theirs = {p.name for p in out_dir.iterdir() if p.name.startswith(".results.jsonl.loom-")}
    other = loom_proc("quarantine", "approve", second, "--json")
    # B gets as far as it can while A holds the destination: it staged its copy of the file
    # (as it did) or waits for A's lock before reading the file (as it should).
    deadline = time.monotonic() + 6
    while not any(p.name.startswith(".results.jsonl.loom-") and p.name not in theirs
                  and p.stat().st_size > 0 for p in out_dir.iterdir()):
        assert other.poll() is None, other.communicate()[1][-2000:]
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(held.pid, signal.SIGCONT)
    out_a, err_a = held.communicate(timeout=60)
    out_b, err_b = other.communicate(timeout=60)
    assert held.returncode == 0 and other.returncode == 0, (err_a[-1000:], err_b[-1000:])
    results = json.loads(out_a) + json.loads(out_b)
    assert [r["loaded"] for r in results] == [True, True], results
    assert statuses(loom_home, [first, second]) == ["approved", "approved"]
    after = written_ids(pipeline)
    added = sorted(set(after) - set(before))
    print(f"\nrows before {len(before)}, after {sum(after.values())}; added {added}")
    assert len(added) == 2, f"an approved record is not in the file: only {added} were added"


def test_records_approved_from_a_killed_replace_run_survive_its_resume(tmp_path, loom_home):
    """Promise: "Every record ends in exactly one place" and "Quarantine actions load exactly
    once" (an approved record is loaded and stays so); `--resume` of a `replace` run rebuilds
    its destination, and a release, which does the same, keeps "records approved from the
    run's quarantine before the release" (docs/explanation/guarantees.md).

    Did: a `replace` JSON Lines run, every third record quarantined, kill -9'd once five
    records were quarantined; `loom quarantine approve` of those five (they are written to
    the file: "loaded": true); then `loom --run … --resume`.

    Happened: the resume swaps in a file of the run's passing records only: the five
    approved records, still `approved` in the store, are in no destination any more (an
    `append` destination keeps them; core/release.py `_write` adds approved records to the
    file it swaps in, the resumed run's replace does not).

    Fixed: every rebuild of a run's replace destination writes the records approved from its
    quarantine (core/approved.py `write_approved`, used by the engine's commit and by
    release)."""
    from tests.adversary.test_quarantine_attacks import (loom_run, source, statuses, store,
                                                         written_ids)

    def slow_answer(n: int, body: dict[str, Any]) -> Any:
        time.sleep(0.03)
        text = prompt_text(body)
        return ok(text.split("reply: ", 1)[1].split("\n", 1)[0].strip())

    from tests.adversary.hostile import Hostile
    with Hostile(slow_answer) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=source(150), base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 2},
                                  evaluate={"max_rejection_rate": 0.5},
                                  load={"destination": "jsonl://out/results.jsonl",
                                        "mode": "replace"})
        proc = _loom("--run", str(pipeline), "--json")

        def quarantined() -> list[tuple[Any, ...]]:
            try:
                return store(loom_home, "SELECT id, record_id FROM quarantined_records")
            except Exception:
                return []
        deadline = time.monotonic() + 40
        while len(quarantined()) < 5:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        rows = quarantined()
        ids, records = [str(i) for i, _ in rows], [r for _, r in rows]
        approved = loom_run("quarantine", "approve", *ids, "--json")
        assert approved.returncode == 0, approved.stderr[-2000:]
        assert all(r["loaded"] for r in json.loads(approved.stdout))
        assert all(written_ids(pipeline)[r] == 1 for r in records)

        resumed = loom_run("--run", str(pipeline), "--resume", "--json")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert statuses(loom_home, ids) == ["approved"] * len(ids)
    written = written_ids(pipeline)
    missing = [r for r in records if written[r] != 1]
    print(f"\napproved {records}; after the resume the file has {sum(written.values())} rows, "
          f"missing {missing}")
    assert missing == [], f"approved records gone from the destination after --resume: {missing}"


def test_a_resume_of_records_with_one_prompt_counts_calls_nobody_made(tmp_path, loom_home):
    """Promise: "`llm.calls` is every call the run made across its attempts,
    `llm.calls_this_attempt` the resumed run's own, `llm.calls_repeated` those made twice";
    and a run without the cache asks the model for each record (docs/explanation/guarantees.md: What Loom
    guarantees; `--no-cache asks the model again`).

    Did: 120 records whose prompts are identical (same text, same reply line), `cache:
    false`, concurrency 8, against a keep-alive loopback server that counts requests;
    kill -9 once the server has read 30; `--resume`.

    Happened: the summary says more calls than the server ever received — by more than the
    8 calls that can be in flight — and the server got fewer requests than there are
    records: the run's journal is keyed by the request, so answers journaled for some
    records are handed to other records with the same prompt on resume (core/llm/client.py
    `journal.take(key)`), and each of those is counted as a call of the first attempt that
    nobody made."""
    from tests.adversary.hostile import Hostile

    def slow_answer(n: int, body: dict[str, Any]) -> Any:
        time.sleep(0.02)
        text = prompt_text(body)
        return ok(text.split("reply: ", 1)[1].split("\n", 1)[0].strip())

    rows = [{"id": f"r{i}", "text": "same text", "expected": "positive",
             "reply": reply("positive")} for i in range(120)]
    with Hostile(slow_answer) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8})
        proc = _loom("--run", str(pipeline), "--json")
        deadline = time.monotonic() + 40
        while server.requests < 30:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        time.sleep(0.2)
        resumed = _loom("--run", str(pipeline), "--resume", "--json")
        out, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, err[-2000:]
        summary = json.loads(out.strip().splitlines()[-1])
        received = server.requests
    assert summary["records"]["loaded"] == 120
    llm = summary["llm"]
    print(f"\nserver received {received} requests; summary: {llm}")
    assert llm["calls"] - received < 8, (
        f"summary says {llm['calls']} calls, the server received {received}")
