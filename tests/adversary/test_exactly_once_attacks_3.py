"""Attacks on "loaded exactly once", "paid for at most once, and counted truthfully" and "every
record ends in exactly one place" across kill -9 and --resume (README, What Loom guarantees),
with real processes, loopback servers of this file's own that count what they receive, and a
launcher that kills the process with SIGKILL at an exact line of Loom's code (the moment a
test wants: after the N-th answer was journaled, inside the journal's discard, ...)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.adversary.hostile import ROOT, ok, openai_error, prompt_text
from tests.pipelines import read_jsonl, reply, write_pipeline

# Runs `loom ARGS…` after patching Loom so that it SIGKILLs itself at a chosen point:
#   LOOM_TEST_KILL_AFTER_ANSWERS=N  right after the N-th answer is written to the journal
#   LOOM_TEST_KILL_IN_DISCARD=1     when the run, ended, is about to delete its journal
LAUNCHER = r"""
import os, signal, sys
from core.llm import answer_journal as j

after = int(os.environ.get("LOOM_TEST_KILL_AFTER_ANSWERS") or 0)
if after:
    original = j.AnswerJournal.answered
    seen = [0]
    def answered(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen[0] += 1
        if seen[0] >= after:
            os.kill(os.getpid(), signal.SIGKILL)
    j.AnswerJournal.answered = answered
if os.environ.get("LOOM_TEST_KILL_IN_DISCARD"):
    def discard(self):
        os.kill(os.getpid(), signal.SIGKILL)
    j.AnswerJournal.discard = discard
writes = int(os.environ.get("LOOM_TEST_KILL_AFTER_SQLITE_WRITES") or 0)
if writes or os.environ.get("LOOM_TEST_KILL_AFTER_SQLITE_COMMIT"):
    from core.connectors import sqlite as q
    write_records, commit = q.SqliteSink.write_records, q.SqliteSink.commit
    done = [0]
    async def killing_write(self, *args, **kwargs):
        await write_records(self, *args, **kwargs)
        done[0] += 1
        if writes and done[0] >= writes:
            os.kill(os.getpid(), signal.SIGKILL)
    async def killing_commit(self, *args, **kwargs):
        await commit(self, *args, **kwargs)
        if os.environ.get("LOOM_TEST_KILL_AFTER_SQLITE_COMMIT"):
            os.kill(os.getpid(), signal.SIGKILL)
    q.SqliteSink.write_records, q.SqliteSink.commit = killing_write, killing_commit
if os.environ.get("LOOM_TEST_KILL_AFTER_S3_DELETE"):
    from core.connectors import s3
    delete_under = s3.S3Sink._delete_under
    async def killing_delete(self, client, prefix, keep=None, spare=None):
        await delete_under(self, client, prefix, keep=keep, spare=spare)
        if keep is not None:
            os.kill(os.getpid(), signal.SIGKILL)
    s3.S3Sink._delete_under = killing_delete
if os.environ.get("LOOM_TEST_KILL_BEFORE_S3_LOCK_RELEASE"):
    from core.connectors import object_lock
    async def killing_release(self):
        os.kill(os.getpid(), signal.SIGKILL)
    object_lock.ObjectCommitLock.release = killing_release
from loom_tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    for name in ("LOOM_TEST_KILL_AFTER_ANSWERS", "LOOM_TEST_KILL_IN_DISCARD", "LOOM_CRASH_AT",
                 "LOOM_TEST_KILL_AFTER_SQLITE_WRITES", "LOOM_TEST_KILL_AFTER_SQLITE_COMMIT",
                 "LOOM_TEST_KILL_AFTER_S3_DELETE", "LOOM_TEST_KILL_BEFORE_S3_LOCK_RELEASE"):
        env.pop(name, None)
    env.update(extra)
    return env


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], cwd=ROOT,
                            env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run(*args: str, env: dict[str, str] | None = None,
         timeout: float = 120) -> tuple[int, dict[str, Any] | None, str]:
    proc = _spawn(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    summary = None
    for line in out.splitlines()[::-1]:
        if line.startswith("{"):
            try:
                summary = json.loads(line)
                break
            except ValueError:
                pass
    return proc.returncode, summary, err


def _reply_of(body: dict[str, Any]) -> str:
    return prompt_text(body).split("reply: ", 1)[1].split("\n", 1)[0].strip()


class Counting:
    """An OpenAI-style server that counts what it received and what it answered: `received`
    (requests whose body it read), `answered` (200 answers written in full), `failed` (error
    answers written). `decide(n, body)` returns an Answer or None for the reply-line answer;
    `delay_s` is waited before each answer."""

    def __init__(self, decide: Callable[[int, dict[str, Any]], Any] | None = None,
                 delay_s: float = 0.0) -> None:
        self.decide = decide
        self.delay_s = delay_s
        self.received = 0
        self.answered = 0
        self.failed = 0
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                if not body:
                    return
                with outer._lock:
                    outer.received += 1
                    n = outer.received
                    outer.prompts.append(prompt_text(body))
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                answer = outer.decide(n, body) if outer.decide else None
                if answer is None:
                    answer = ok(_reply_of(body))
                status, headers, payload = answer
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    return
                with outer._lock:
                    if status == 200:
                        outer.answered += 1
                    else:
                        outer.failed += 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Counting":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _rows(n: int, *, same: bool = False) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": "same text" if same else f"text {i}",
             "expected": "positive", "reply": reply("positive")} for i in range(n)]


def _journal_files(loom_home: Path) -> list[Path]:
    folder = loom_home / "journal"
    return sorted(folder.glob("*.jsonl")) if folder.exists() else []


def _ids_in_jsonl(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in read_jsonl(path):
        key = str(row.get("id"))
        counts[key] = counts.get(key, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------


def test_cache_shared_answer_is_not_paid_again_after_a_kill(tmp_path, loom_home):
    """Promise: "an answer that had arrived is never paid again, checkpointed or not"; with
    `cache: true` identical requests share one call (README, What Loom guarantees; the
    client's docstring: "Identical requests in flight at the same time share one call").

    Did: 20 records with one prompt, `cache: true`, concurrency 8, a server answering after
    0.3 s. The run is SIGKILLed right after its first answer is written to the journal (the
    moment "after the server answered but before checkpoint"); then `--resume`.

    Happened (every trial): the server received 1 request in the first attempt and 1 more
    in the resume (summary: calls 2, calls_this_attempt 1, calls_repeated 0, cache_hits 18)
    for the one prompt, where a run that is not killed makes 1: the journal keeps the answer under the leading record's scope only
    (core/llm/answer_journal.py `_scoped`, written by core/llm/client.py `_call`); on resume
    that record takes it from the journal (`LLMClient.complete` returns before `_lead`, so
    the answer is neither put in the cache nor shared with the waiters), the response cache
    entry was never flushed (core/store/store.py `cache_put` batches for 2 s), and the other
    19 records make a new call: the arrived answer is paid again (calls_repeated 0).

    Fixed: under `cache: true` a resume takes the journaled answer of any record with the
    request, as a cache hit (AnswerJournal.shared)."""
    rows = _rows(20, same=True)
    with Counting(delay_s=0.3) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": True, "concurrency": 8})
        code, _, err = _run("--run", str(pipeline), "--json",
                            env=_env(LOOM_TEST_KILL_AFTER_ANSWERS="1"))
        assert code == -signal.SIGKILL, err[-2000:]
        first = server.received
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.received
    assert first == 1
    written = _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl")
    assert written == {f"r{i}": 1 for i in range(20)}
    assert summary is not None and summary["records"]["loaded"] == 20
    print(f"\nserver received {first} then {received - first}; summary llm {summary['llm']}")
    assert received == 1, f"one prompt, one answer that arrived: the server got {received} calls"


class GatedProxy:
    """A forwarding HTTP proxy (absolute-URI requests, as HTTP_PROXY makes httpx send): it
    reads each request in full, then forwards it upstream only while `gate` is set; a request
    held at the gate whose client went away is never forwarded. Counts `received`."""

    def __init__(self) -> None:
        self.received = 0
        self.forwarded = 0
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                import http.client
                import urllib.parse
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with outer._lock:
                    outer.received += 1
                while not outer.gate.wait(0.05):
                    # The client is gone (killed): drop its request, as nothing will read it.
                    try:
                        self.connection.setblocking(False)
                        try:
                            if self.connection.recv(1, socket.MSG_PEEK) == b"":
                                return
                        except BlockingIOError:
                            pass
                        finally:
                            self.connection.setblocking(True)
                    except OSError:
                        return
                target = urllib.parse.urlsplit(self.path)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("proxy-connection", "connection", "host")}
                upstream.request("POST", target.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                with outer._lock:
                    outer.forwarded += 1
                try:
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("connection", "transfer-encoding", "content-length",
                                               "server", "date"):
                            self.send_header(key, value)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass
                upstream.close()

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "GatedProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.xfail(strict=True, reason="through an HTTP proxy a call is journaled as sent when its "
                   "headers reach the proxy; calls the proxy never forwarded are counted as made "
                   "and repeated")
def test_calls_held_by_a_proxy_at_the_kill_are_not_counted_as_made(tmp_path, loom_home,
                                                                    monkeypatch):
    """Promise: "A call counts as made once its request starts going out on an open
    connection: one still connecting at a kill -9 never reached the provider and is not
    counted"; `llm.calls` is every call made, `llm.calls_repeated` those made twice.

    Did: HTTP_PROXY points at a forwarding proxy of the test's own (so Loom uses httpx's
    transport). It forwards the first 12 requests, then holds the next ones at its gate (as
    a proxy still connecting upstream does). Once 8 are held the run is SIGKILLed; the
    held requests are dropped, never forwarded: the model server never received them. Then
    `--resume` through the open proxy.

    Happened (every trial): 8 held at the proxy; the server received 12 then 28 = 40
    requests, one per record; the summary says calls 48, calls_repeated 8,
    calls_this_attempt 28. The held calls are counted as made in the first attempt and made
    again (llm.calls exceeds the requests the model server received by the held ones;
    calls_repeated counts them): the journal's `sent` line is written at httpcore's
    `send_request_headers.started` trace event (core/llm/transport.py `_sending_trace`),
    which fires when the request goes to the proxy, not to the provider."""
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    rows = _rows(40)
    with Counting() as server, GatedProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8, "timeout_s": 30})
        proc = _spawn("--run", str(pipeline), "--json")
        deadline = time.monotonic() + 40
        while proxy.received < 12:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.001)
        proxy.gate.clear()
        while proxy.received - proxy.forwarded < 8 and proxy.received < 40:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.3)
        held = proxy.received - proxy.forwarded
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        time.sleep(0.5)  # the held requests see their client gone and are dropped
        at_kill = server.received
        proxy.gate.set()
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.received
    assert summary is not None
    assert summary["records"]["loaded"] == 40
    assert _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl") == {
        f"r{i}": 1 for i in range(40)}
    llm = summary["llm"]
    print(f"\nheld at the proxy {held}; server received {at_kill} then {received - at_kill}; "
          f"summary llm {llm}")
    assert llm["calls_this_attempt"] == received - at_kill
    assert llm["calls"] == received, (
        f"summary says {llm['calls']} calls ({llm['calls_repeated']} repeated), "
        f"the model server received {received}")
    assert llm["calls_repeated"] == received - 40


def test_kill_while_deleting_the_journal_does_not_count_repeats_twice(tmp_path, loom_home):
    """Promise: `llm.calls` is every call the run made across its attempts and
    `llm.calls_repeated` those made twice, across kill -9 at any moment and --resume.

    Did: 30 records, the server answering after 0.2 s. Attempt 1 is SIGKILLed after its 8th
    answer (7 calls in flight, received by the server, never answered to Loom). Attempt 2
    (resume) meets a server that refuses every call with 503 (max_retries 0): the breaker
    stops it, `failed`, records skipped; it writes its row (calls_repeated = the in-flight
    calls of attempt 1) and is SIGKILLed as it deletes its journal. Attempt 3 (resume) with
    a good server finishes the run.

    Happened (three trials): attempt 1 left 7, 4, 5 calls unanswered at the kill; attempt 3
    said calls_repeated 21, 10, 18 and llm.calls 51, 40, 48 where the server says 7, 4, 5
    and 37, 34, 35. Attempt 1's in-flight calls are counted twice: once from the run row's
    `extra.calls_repeated` (written by attempt 2) and once more from the journal, which still
    holds their `sent` lines (core/engine.py `_reconcile`: `repeated = extra calls_repeated +
    earlier.unanswered`; the run's end records the row before `self._journal.discard()`);
    and attempt 2's own calls that the breaker cancelled (sent, refused or never read, no
    `ended` line) are counted as made and repeated too.

    Fixed: a resume of a run whose end was recorded forgets the journal that end left behind;
    calls cancelled at attempt 2's stop are counted once, as calls_abandoned."""
    rows = _rows(30)
    refuse = threading.Event()

    def decide(n: int, body: dict[str, Any]) -> Any:
        if refuse.is_set():
            return openai_error(503, "overloaded")
        return None

    with Counting(decide, delay_s=0.2) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8,
                                             "max_retries": 0})
        code, _, err = _run("--run", str(pipeline), "--json",
                            env=_env(LOOM_TEST_KILL_AFTER_ANSWERS="8"))
        assert code == -signal.SIGKILL, err[-2000:]
        time.sleep(0.5)  # the in-flight requests are answered into a dead socket
        first_received = server.received
        first_answered_to_loom = 8
        in_flight = first_received - first_answered_to_loom
        refuse.set()
        code, second, err = _run("--run", str(pipeline), "--resume", "--json",
                                 env=_env(LOOM_TEST_KILL_IN_DISCARD="1"))
        assert code == -signal.SIGKILL, err[-2000:]
        refused = server.failed
        second_received = server.received - first_received
        # Attempt 2's calls the breaker's stop cancelled before their refusal was read: Loom
        # cannot know how they ended, so it counts them as made (calls_abandoned in its row)
        # and the next resume as repeated.
        with sqlite3.connect(loom_home / "loom.db") as conn:
            (extra,), = conn.execute("SELECT extra FROM pipeline_runs").fetchall()
        abandoned = int(json.loads(extra or "{}").get("calls_abandoned") or 0)
        assert abandoned <= second_received - refused + 8
        refuse.clear()
        before_third = server.received
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        third = server.received - before_third
    assert summary is not None and summary["records"]["loaded"] == 30
    assert _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl") == {
        f"r{i}": 1 for i in range(30)}
    llm = summary["llm"]
    print(f"\nattempt 1: server received {first_received}, {in_flight} unanswered at the kill; "
          f"attempt 2: {second_received} received, {refused} refused; attempt 3: {third}; summary llm {llm}")
    assert llm["calls_this_attempt"] == third
    # Calls made (refused ones are not calls): attempt 1's received + attempt 3's.
    assert llm["calls_repeated"] == in_flight + abandoned, (
        f"{in_flight} calls were in flight at the kill and {abandoned} cancelled at the stop; "
        f"the summary says {llm['calls_repeated']} repeated")
    assert llm["calls"] == first_received + third + abandoned


def test_sigterm_with_calls_in_flight_counts_every_call_once(tmp_path, loom_home):
    """Promise: "ctrl+c (or SIGTERM) stops a run cleanly: records in flight finish, the rest
    are skipped"; across the stop and `--resume`, `llm.calls` is every call made and
    `llm.calls_repeated` those made twice; each record loaded once.

    Did: 40 records, a server answering after 0.3 s, concurrency 8; SIGTERM once the server
    has received 12 requests (8 in flight); then `--resume`; compare with what the server
    received."""
    rows = _rows(40)
    with Counting(delay_s=0.3) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8})
        proc = _spawn("--run", str(pipeline), "--json")
        deadline = time.monotonic() + 40
        while server.received < 12:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        time.sleep(0.5)
        at_stop = server.received
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.received
    assert summary is not None and summary["records"]["loaded"] == 40
    assert _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl") == {
        f"r{i}": 1 for i in range(40)}
    llm = summary["llm"]
    print(f"\nserver received {at_stop} then {received - at_stop}; summary llm {llm}")
    assert llm["calls_this_attempt"] == received - at_stop
    assert llm["calls"] == received
    assert llm["calls_repeated"] == received - 40


def test_breaker_stop_with_calls_in_flight_counts_every_call_once(tmp_path, loom_home):
    """Promise: `llm.calls` is every call the run made across its attempts, `llm.calls_repeated`
    those made twice ("received by the server but whose answers the attempt never kept");
    a run the breaker stopped is finished by `--resume`, each record loaded once.

    Did: 40 records, concurrency 8, `max_retries: 0`. While the switch is on, the server
    answers the 3 records r0..r2 at once with 503 (the breaker opens after 3 in a row) and
    every other record with 200 after 0.4 s: the breaker stops the run (`failed`, 40 skipped)
    with the other calls in flight, which the server answers 200. The switch is turned off and
    the run resumed.

    Happened: the server received 10 requests in the first attempt (3 refused, 7 answered
    200) and 40 in the resume: 47 calls made, 7 of them twice. The first attempt's summary
    says 0 calls; the resume's says calls 40, calls_repeated 0. The breaker's stop cancels
    the calls in flight (a CancelledError, not a ProviderError, so core/llm/client.py `_call`
    writes no `ended`, and no LLMCall is made), the run's row counts none of them, and
    core/engine.py (the run's end) discards the journal that held their `sent` lines: the
    resume cannot know they were made. (A SIGTERM lets calls in flight finish and is
    counted right: test_sigterm_with_calls_in_flight_counts_every_call_once.)

    Fixed: the journal knows the calls this process left open; the run's end counts them
    (calls_abandoned) and a resume counts them as repeated."""
    rows = _rows(40)
    failing = threading.Event()
    failing.set()

    def decide(n: int, body: dict[str, Any]) -> Any:
        text = prompt_text(body)
        if failing.is_set() and any(f"text {i}\n" in text for i in range(3)):
            return openai_error(503, "overloaded")
        if failing.is_set():
            time.sleep(0.4)
        return None

    with Counting(decide) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8,
                                             "max_retries": 0})
        code, first, err = _run("--run", str(pipeline), "--json")
        time.sleep(1.0)  # the calls in flight at the stop are answered (into closed sockets)
        failing.clear()
        at_stop, refused = server.received, server.failed
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.received
    assert first is not None and first["status"] == "failed", first
    assert summary is not None and summary["records"]["loaded"] == 40
    assert _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl") == {
        f"r{i}": 1 for i in range(40)}
    # The stopped attempt counts what it made, the calls cancelled in flight included.
    assert first["llm"]["calls"] == first["llm"]["calls_this_attempt"] == at_stop - refused
    llm = summary["llm"]
    print(f"\nfirst attempt: server received {at_stop} ({refused} refused), summary "
          f"{first['llm']}, records {first['records']}; resume: {received - at_stop}; "
          f"summary llm {llm}")
    made = received - refused  # refused (503) requests are not calls, by design
    assert llm["calls_this_attempt"] == received - at_stop
    assert llm["calls"] == made, f"summary {llm['calls']} calls, the server answered {made}"
    assert llm["calls_repeated"] == made - 40


def _read_destination(folder: Path, destination: str) -> list[str]:
    import csv
    scheme, _, target = destination.partition("://")
    path = folder / target
    if scheme == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [row["id"] for row in csv.DictReader(handle)]
    if scheme == "jsonl":
        return [str(row["id"]) for row in read_jsonl(path)]
    if scheme == "json":
        return [str(row["id"]) for row in json.loads(path.read_text(encoding="utf-8"))]
    with sqlite3.connect(path) as conn:
        return [str(r[0]) for r in conn.execute("SELECT id FROM reviews")]


def _seed(folder: Path, destination: str) -> list[str]:
    """Rows another run put there before: an append must keep them, a replace drop them."""
    import csv
    scheme, _, target = destination.partition("://")
    path = folder / target
    path.parent.mkdir(parents=True, exist_ok=True)
    old = [{"id": f"old{i}", "sentiment": "neutral"} for i in range(3)]
    if scheme == "csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "sentiment"])
            writer.writeheader()
            writer.writerows(old)
    elif scheme == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in old), encoding="utf-8")
    elif scheme == "json":
        path.write_text(json.dumps(old), encoding="utf-8")
    else:
        return []
    return [r["id"] for r in old]


SINK_CASES = [
    ("csv://out/r.csv", "append", {"LOOM_CRASH_AT": "file:renamed"}),
    ("csv://out/r.csv", "replace", {"LOOM_CRASH_AT": "file:renamed"}),
    ("json://out/r.json", "append", {"LOOM_CRASH_AT": "file:renamed"}),
    ("json://out/r.json", "replace", {"LOOM_CRASH_AT": "file:renamed"}),
    ("jsonl://out/r.jsonl", "append", {"LOOM_CRASH_AT": "file:renamed"}),
    ("jsonl://out/r.jsonl", "replace", {"LOOM_CRASH_AT": "file:renamed"}),
    ("jsonl://out/r.jsonl", "append", {"LOOM_TEST_KILL_AFTER_ANSWERS": "17"}),
    ("sqlite://out/r.db", "append", {"LOOM_TEST_KILL_AFTER_SQLITE_WRITES": "2"}),
    ("sqlite://out/r.db", "replace", {"LOOM_TEST_KILL_AFTER_SQLITE_WRITES": "2"}),
    ("sqlite://out/r.db", "append", {"LOOM_TEST_KILL_AFTER_SQLITE_COMMIT": "1"}),
    ("sqlite://out/r.db", "replace", {"LOOM_TEST_KILL_AFTER_SQLITE_COMMIT": "1"}),
]


@pytest.mark.parametrize("destination,mode,kill", SINK_CASES,
                         ids=[f"{d.split(':')[0]}-{m}-{'_'.join(k.values())}"
                              for d, m, k in SINK_CASES])
def test_kill_at_the_sink_then_resume_loads_each_record_once(tmp_path, loom_home, destination,
                                                            mode, kill):
    """Promise: "Loaded exactly once per record id, for every destination, across crashes and
    resumes" and "Every record ends in exactly one place, and a run's counts say so".

    Did: 30 records (r7 twice in the source, and r11's answer fails the gate), `load.batch_size`
    5, into a destination that already holds 3 rows of an earlier run (files); SIGKILL at
    the file's rename (core.crashpoints `file:renamed`), after the 17th journaled answer, or
    after the SQLite sink's 2nd batch or its commit; then `--resume`. Checked: each passing
    id once at the destination, the earlier rows kept by append and gone after replace, and
    extracted = loaded + quarantined + skipped = the source's 31 rows; llm.calls equal to the
    requests the server received. Held for every case."""
    rows = _rows(30)
    rows.insert(8, dict(rows[7], text="the duplicate of r7"))
    rows[12]["reply"] = reply("negative")  # r11: fails exact_match against expected positive
    with Counting(delay_s=0.01) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 4},
                                  load={"destination": destination, "mode": mode,
                                        "batch_size": 5, **({"table": "reviews"}
                                                            if destination.startswith("sqlite")
                                                            else {})})
        old = _seed(pipeline.parent, destination)
        code, _, err = _run("--run", str(pipeline), "--json", env=_env(**kill))
        assert code == -signal.SIGKILL, f"not killed ({code}): {err[-2000:]}"
        time.sleep(0.2)
        first = server.received
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.received
    assert summary is not None
    assert summary["llm"]["calls"] == received
    assert summary["llm"]["calls_this_attempt"] == received - first
    assert summary["llm"]["calls_repeated"] == received - 30
    ids = _read_destination(pipeline.parent, destination)
    counts = {i: ids.count(i) for i in set(ids)}
    expected = {f"r{i}": 1 for i in range(30) if i != 11}
    if mode == "append":
        expected.update({i: 1 for i in old})
    records = summary["records"]
    print(f"\n{destination} {mode} {kill}: records {records}, llm {summary['llm']}")
    assert counts == expected, {k: v for k, v in counts.items() if expected.get(k) != v} or \
        sorted(set(expected) - set(counts))
    assert records["loaded"] == 29
    assert records["extracted"] == 31
    assert records["extracted"] == records["loaded"] + records["quarantined"] + records["skipped"]


@pytest.mark.parametrize("kill_after", [5, 13, 22])
def test_judged_records_with_one_prompt_killed_then_resumed_count_every_call(tmp_path,
                                                                             loom_home,
                                                                             kill_after):
    """Promise: paid for at most once and counted truthfully with an LLM judge (a second call
    per record): `llm.calls` = what the server received across the attempts,
    `llm.calls_this_attempt` = what it received during the resume, `llm.calls_repeated` =
    the calls made twice; each record loaded once.

    Did: 20 records with one prompt (so their judge prompts are identical too), `cache:
    false`, a `custom_criteria` judge on the same server, the server answering after 0.05 s;
    SIGKILL right after the Nth journaled answer (transform or judge); `--resume`."""
    from tests.support.judging import is_judge_request

    def decide(n: int, body: dict[str, Any]) -> Any:
        if is_judge_request(body):
            return ok(json.dumps({"score": 0.9, "confidence": 0.8, "explanation": "fine",
                                  "criteria_met": ["label"], "criteria_not_met": []}))
        return None

    rows = _rows(20, same=True)
    with Counting(decide, delay_s=0.05) as server:
        pipeline = write_pipeline(
            tmp_path / "p", rows=rows, base_url=server.base_url,
            transform={"cache": False, "concurrency": 4},
            evaluate={"evaluators": [{"name": "judged", "type": "custom_criteria",
                                      "criteria": "Accurate sentiment", "model": "gpt-4o-mini",
                                      "base_url": server.base_url, "api_key": "k",
                                      "threshold": 0.5}]})
        code, _, err = _run("--run", str(pipeline), "--json",
                            env=_env(LOOM_TEST_KILL_AFTER_ANSWERS=str(kill_after)))
        assert code == -signal.SIGKILL, err[-2000:]
        time.sleep(0.3)
        first = server.received
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.received
    assert summary is not None and summary["records"]["loaded"] == 20, summary
    assert _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl") == {
        f"r{i}": 1 for i in range(20)}
    llm = summary["llm"]
    print(f"\nkill after {kill_after}: server received {first} then {received - first}; "
          f"llm {llm}")
    assert llm["calls_this_attempt"] == received - first
    assert llm["calls"] == received
    assert llm["calls_repeated"] == received - 40


def test_two_kills_in_a_row_then_resume_count_every_call(tmp_path, loom_home):
    """Promise: across kill -9 at any moment and `--resume`, `llm.calls` = what the server
    received in all attempts, `llm.calls_this_attempt` = the last attempt's, and
    `llm.calls_repeated` = the calls made twice; each record loaded once.

    Did: 40 records, a server answering after 0.1 s, concurrency 8. (A first version sent an
    immediate 429 every 7th request and found the summary 1-2 calls above the requests the
    server answered 200: 429s whose answer was unread at a kill count as calls in flight,
    which is the promise's own definition — Loom cannot know what an unread answer said — so
    the 429s were taken out.) Attempt 1
    SIGKILLed after its 10th journaled answer; attempt 2 (`--resume`) after its 10th;
    attempt 3 finishes. The journal of attempt 1 is still there when attempt 2 appends."""
    def decide(n: int, body: dict[str, Any]) -> Any:
        time.sleep(0.1)
        return None

    rows = _rows(40)
    with Counting(decide) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8})
        for args in (("--run", str(pipeline), "--json"),
                     ("--run", str(pipeline), "--resume", "--json")):
            code, _, err = _run(*args, env=_env(LOOM_TEST_KILL_AFTER_ANSWERS="10"))
            assert code == -signal.SIGKILL, err[-2000:]
            time.sleep(0.4)
        before = server.received
        refused_before = server.failed
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received, refused = server.received, server.failed
    assert summary is not None and summary["records"]["loaded"] == 40
    assert _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl") == {
        f"r{i}": 1 for i in range(40)}
    llm = summary["llm"]
    made = received - refused
    print(f"\nserver received {before} ({refused_before} 429s) in attempts 1-2, then "
          f"{received - before} ({refused - refused_before} 429s); llm {llm}")
    assert llm["calls_this_attempt"] == made - (before - refused_before)
    assert llm["calls"] == made
    assert llm["calls_repeated"] == made - 40


def test_budget_stop_with_calls_in_flight_then_resume_counts_every_call(tmp_path, loom_home):
    """Promise: a budget stop ends the run `partial` with records skipped for `--resume`
    (`--set budget.max_cost_usd=1` finishes it); `llm.calls` = what the server received
    across the attempts, `llm.calls_repeated` the calls made twice; each record loaded once.

    Did: 60 records, `max_tokens` 50, a server answering after 0.3 s, concurrency 8, a budget
    of $0.0003: the budget stops
    the run with calls in flight; then `--resume --set budget.max_cost_usd=1`."""
    rows = _rows(60)
    with Counting(delay_s=0.3) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8,
                                             "max_tokens": 50},
                                  budget={"max_cost_usd": 0.0003})
        code, first, err = _run("--run", str(pipeline), "--json")
        time.sleep(0.6)
        at_stop = server.received
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json",
                                  "--set", "budget.max_cost_usd=1")
        assert code == 0, err[-2000:]
        received = server.received
    assert first is not None and first["status"] == "partial", first
    assert summary is not None and summary["records"]["loaded"] == 60, summary
    assert _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl") == {
        f"r{i}": 1 for i in range(60)}
    llm = summary["llm"]
    print(f"\nfirst: server received {at_stop}, summary calls {first['llm']['calls']}, "
          f"records {first['records']}; resume: {received - at_stop}; llm {llm}")
    assert first["llm"]["calls"] == at_stop
    assert llm["calls_this_attempt"] == received - at_stop
    assert llm["calls"] == received
    assert llm["calls_repeated"] == received - 60


def test_httpx_transport_calls_still_connecting_at_a_kill_are_not_counted(tmp_path, loom_home):
    """Promise: "A call counts as made once its request starts going out on an open
    connection: one still connecting at a kill -9 never reached the provider and is not
    counted", with `transform.http_transport: httpx` (httpcore's own trace events).

    Did: the slow-accepting server of test_exactly_once_attacks (a new connection per call,
    one accepted every 0.3 s, backlog 1: most calls wait in connect()); kill -9 after the
    server read 6 requests; drain; `--resume` against the fast server; compare."""
    from tests.adversary.test_exactly_once_attacks import SlowAcceptServer
    rows = _rows(40)
    with SlowAcceptServer() as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 8, "timeout_s": 30,
                                             "http_transport": "httpx"})
        proc = _spawn("--run", str(pipeline), "--json")
        deadline = time.monotonic() + 40
        while server.requests < 6:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        server.slow.clear()
        time.sleep(1.5)
        at_kill = server.requests
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.requests
    assert summary is not None and summary["records"]["loaded"] == 40
    llm = summary["llm"]
    print(f"\nserver read {at_kill} then {received - at_kill}; llm {llm}")
    assert llm["calls_this_attempt"] == received - at_kill
    assert llm["calls"] == received
    assert llm["calls_repeated"] == received - 40


@pytest.mark.parametrize("kill_after", [4, 11])
def test_keep_last_duplicates_killed_then_resumed_load_the_last_once(tmp_path, loom_home,
                                                                    kill_after):
    """Promise: each record id loaded exactly once (with `extract.on_duplicate_id: keep_last`,
    the last occurrence), every record in exactly one place, calls counted truthfully.

    Did: 24 rows where ids r0..r5 appear twice (first with reply neutral, last with reply
    positive, so a wrong pick shows in the output), one prompt for all other rows, `cache:
    false`, concurrency 4; SIGKILL after the Nth journaled answer; `--resume`. Held: the
    last occurrences loaded once each, the first ones counted skipped, calls as received."""
    rows = _rows(18, same=True)
    for i in range(6):
        rows.insert(i * 2, {"id": f"r{i}", "text": f"early {i}", "expected": "positive",
                            "reply": reply("neutral")})
    with Counting(delay_s=0.05) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 4},
                                  extract={"on_duplicate_id": "keep_last"},
                                  evaluate={"evaluators": [
                                      {"name": "label_ok", "type": "one_of",
                                       "field": "output.sentiment",
                                       "values": ["positive", "negative", "neutral"]}]})
        code, _, err = _run("--run", str(pipeline), "--json",
                            env=_env(LOOM_TEST_KILL_AFTER_ANSWERS=str(kill_after)))
        assert code == -signal.SIGKILL, err[-2000:]
        time.sleep(0.3)
        first = server.received
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code == 0, err[-2000:]
        received = server.received
    assert summary is not None
    out = read_jsonl(pipeline.parent / "out" / "results.jsonl")
    ids = [str(r["id"]) for r in out]
    assert sorted(ids) == sorted(f"r{i}" for i in range(18)), ids
    sentiments = {str(r["id"]): (r.get("output") or r).get("sentiment", r.get("sentiment"))
                  for r in out}
    records, llm = summary["records"], summary["llm"]
    print(f"\nkill after {kill_after}: server {first} then {received - first}; records "
          f"{records}; llm {llm}; early sentiments {[sentiments[f'r{i}'] for i in range(6)]}")
    assert all(sentiments[f"r{i}"] == "positive" for i in range(6)), sentiments
    assert records["extracted"] == 24
    assert records["loaded"] == 18
    assert records["extracted"] == records["loaded"] + records["quarantined"] + records["skipped"]
    assert llm["calls_this_attempt"] == received - first
    assert llm["calls"] == received


def _s3_state(s3: Any, prefix: str = "reviews/") -> dict[str, list[str]]:
    """Each run folder under the prefix: its keys' names (part-…, _SUCCESS)."""
    client = s3.client()
    folders: dict[str, list[str]] = {}
    for item in client.list_objects_v2(Bucket="lake", Prefix=prefix).get("Contents", []):
        rest = item["Key"][len(prefix):]
        folder, _, name = rest.partition("/")
        folders.setdefault(folder, []).append(name)
    return folders


def _s3_published_ids(s3: Any, prefix: str = "reviews/") -> list[str]:
    """The ids a reader sees: the rows of folders that have a _SUCCESS."""
    client = s3.client()
    ids: list[str] = []
    for folder, names in _s3_state(s3, prefix).items():
        if "_SUCCESS" not in names:
            continue
        for name in names:
            if name.endswith(".jsonl"):
                body = client.get_object(Bucket="lake", Key=f"{prefix}{folder}/{name}")["Body"]
                ids.extend(str(json.loads(line)["id"])
                           for line in body.read().decode("utf-8").splitlines() if line)
    return ids


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["append", "replace"])
def test_s3_kill_after_success_before_the_lock_is_released(tmp_path, loom_home, s3, mode):
    """Promise: loaded exactly once per record id into S3 across kill -9 and `--resume`;
    "A good destination is never damaged" (a run that fails leaves it as it was); a killed
    run is finished by `--resume` "once its process is gone".

    Did: an earlier run published 5 rows under s3://lake/reviews/; a second run of 20
    records (`batch_size` 5) is SIGKILLed right after it put its `_SUCCESS`, before
    `ObjectCommitLock.release` deletes `reviews/_loom.lock`: its 20 rows are published
    (a reader sees them, plus the earlier 5 for append). Then `--resume` at once
    (`load.lock_timeout_s` 3).

    Happened: the resume does not count the published rows as loaded (the store never heard
    of the commit), withdraws the killed attempt's folder, writes its parts again, and waits
    for the lock its own dead attempt holds ("run … (pid N on HOST) is committing there"):
    core/connectors/object_lock.py `ObjectCommitLock.acquire` takes a lock over only when it
    is older than STALE_AFTER_S (300 s), never by its holder's pid being dead or by the
    holder being the same run. It fails (exit 1, `DestinationBusy` "nothing was published")
    and core/connectors/s3.py `S3Sink.commit` deletes its run folder: the 20 rows that were
    published before the resume are gone — for replace, the prefix publishes nothing at all
    (the earlier 5 were replaced by the killed attempt). A second `--resume` within 5
    minutes fails the same way.

    Fixed: the lock of the run's own dead attempt (or of a gone process of this machine) is
    taken over at once, and a failed commit never deletes a published run folder."""
    s3.client().create_bucket(Bucket="lake")
    with Counting() as server:
        early = write_pipeline(tmp_path / "early", rows=[dict(r, id=f"old{i}") for i, r in
                                                          enumerate(_rows(5))],
                               base_url=server.base_url,
                               load={"destination": "s3://lake/reviews/", "mode": "append"})
        code, _, err = _run("--run", str(early), "--json")
        assert code == 0, err[-2000:]
        pipeline = write_pipeline(tmp_path / "p", rows=_rows(20), base_url=server.base_url,
                                  transform={"cache": False},
                                  load={"destination": "s3://lake/reviews/", "mode": mode,
                                        "batch_size": 5, "lock_timeout_s": 3})
        code, _, err = _run("--run", str(pipeline), "--json",
                            env=_env(LOOM_TEST_KILL_BEFORE_S3_LOCK_RELEASE="1"))
        assert code == -signal.SIGKILL, err[-2000:]
        published = sorted(_s3_published_ids(s3))
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json", timeout=180)
        after = sorted(_s3_published_ids(s3))
    expected = sorted([f"r{i}" for i in range(20)] +
                      ([f"old{i}" for i in range(5)] if mode == "append" else []))
    assert published == expected  # what a reader saw between the kill and the resume
    print(f"\nafter the kill a reader sees {len(published)} rows; the resume exits {code} "
          f"({err.strip().splitlines()[-1] if err.strip() else ''}); then a reader sees "
          f"{len(after)}: {_s3_state(s3)}")
    assert after == expected, f"published before the resume: {len(published)}, after: {len(after)}"
    assert code == 0 and summary is not None and summary["records"]["loaded"] == 20


@pytest.mark.timeout(300)
def test_s3_replace_killed_mid_commit_keeps_the_old_rows_or_the_new(tmp_path, loom_home, s3):
    """Promise: "Never half-written: a destination has the run's rows or it does not (...
    S3 readers wait for _SUCCESS)" and "A good destination is never damaged" (a `replace` run
    that does not succeed leaves it as it was).

    Did: an earlier run published 5 rows under s3://lake/reviews/ (its folder with
    `_SUCCESS`); a `replace` run of 20 records is SIGKILLed inside its commit, right after it
    deleted the other folders under the prefix and before it put its own `_SUCCESS`. Looked
    at what a reader of the prefix sees.

    Happened: after the kill a reader sees no published rows at all: the earlier run's
    folder is gone and the new run's parts have no `_SUCCESS` (core/connectors/s3.py
    `S3Sink.commit`: `_delete_under(client, self.prefix, keep=self._run_prefix, ...)` then
    `put_object(..._SUCCESS)`). The good destination's 5 rows are destroyed by a run that
    never published. (Its `--resume` within 300 s then also meets the dead attempt's lock:
    test_s3_kill_after_success_before_the_lock_is_released.)

    Fixed: a replace publishes its folder before it deletes the others."""
    s3.client().create_bucket(Bucket="lake")
    with Counting() as server:
        early = write_pipeline(tmp_path / "early", rows=[dict(r, id=f"old{i}") for i, r in
                                                          enumerate(_rows(5))],
                               base_url=server.base_url,
                               load={"destination": "s3://lake/reviews/", "mode": "append"})
        code, _, err = _run("--run", str(early), "--json")
        assert code == 0, err[-2000:]
        before = sorted(_s3_published_ids(s3))
        pipeline = write_pipeline(tmp_path / "p", rows=_rows(20), base_url=server.base_url,
                                  transform={"cache": False},
                                  load={"destination": "s3://lake/reviews/", "mode": "replace",
                                        "batch_size": 5, "lock_timeout_s": 3})
        code, _, err = _run("--run", str(pipeline), "--json",
                            env=_env(LOOM_TEST_KILL_AFTER_S3_DELETE="1"))
        assert code == -signal.SIGKILL, err[-2000:]
        state = _s3_state(s3)
        seen = sorted(_s3_published_ids(s3))
    print(f"\nbefore {len(before)} published rows; after the kill {state}, a reader sees "
          f"{len(seen)}")
    assert seen in (before, sorted(f"r{i}" for i in range(20))), (
        f"killed mid-commit, the prefix publishes {seen}: neither the earlier rows nor the new")


@pytest.mark.parametrize("change", [
    "shrink", "grow",
    "reorder"])
def test_source_changed_between_kill_and_resume_keeps_every_record_in_one_place(
        tmp_path, loom_home, change):
    """Promise: "Every record ends in exactly one place, and a run's counts say so across its
    attempts" (extracted = loaded + quarantined + skipped), each id loaded at most once, and
    an answer that had arrived is never paid again.

    Did: 40 records (r3 fails the gate), `load.batch_size` 5, concurrency 4; SIGKILL after
    the 12th journaled answer; then the CSV changes — `shrink`: its last 10 rows go (never
    processed); `grow`: 10 new rows r40..r49 are added; `reorder`: the rows are reversed (so
    every record's ordinal changes: the journal scopes answers by ordinal and id) — and
    `--resume`.

    Held for shrink and grow. Broke for reorder (a CSV regenerated in another order, or a
    SQL source without ORDER BY): in three trials the server received 15+29, 15+29, 14+34
    requests while the summary said llm.calls 43, 43, 42 (calls_repeated 3, 3, 2), and 4, 4,
    8 prompts of the first attempt were asked again. The answers journaled but not yet
    checkpointed (at least the 12th, which the kill follows at once) are kept under
    `"{ordinal}:{id}|{request key}"` (core/processing.py sets `record_scope` to
    `f"{record.ordinal}:{record.id}"`; core/llm/answer_journal.py `_scoped`/`take`); after the
    reorder no record has that ordinal, so `take` finds nothing, the model is paid again, and
    the orphaned answer's call is counted nowhere (EarlierAttempts counts it only as
    `answers`), so llm.calls falls short of what the server received.

    Fixed (reorder): journaled answers are found by record id, not position."""
    from tests.pipelines import write_csv
    rows = _rows(40)
    rows[3]["reply"] = reply("negative")
    with Counting(delay_s=0.03) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"cache": False, "concurrency": 4},
                                  load={"batch_size": 5})
        code, _, err = _run("--run", str(pipeline), "--json",
                            env=_env(LOOM_TEST_KILL_AFTER_ANSWERS="12"))
        assert code == -signal.SIGKILL, err[-2000:]
        time.sleep(0.3)
        first = server.received
        first_prompts = list(server.prompts)
        if change == "shrink":
            now = rows[:30]
        elif change == "grow":
            now = rows + [dict(r, id=f"r{40 + i}", text=f"text {40 + i}")
                          for i, r in enumerate(_rows(10))]
        else:
            now = rows[::-1]
        write_csv(pipeline.parent / "reviews.csv", now)
        code, summary, err = _run("--run", str(pipeline), "--resume", "--json")
        assert code in (0, 3), err[-2000:]
        received = server.received
        again = [p for p in server.prompts[first:] if p in first_prompts]
    assert summary is not None
    ids = _ids_in_jsonl(pipeline.parent / "out" / "results.jsonl")
    records, llm = summary["records"], summary["llm"]
    print(f"\n{change}: server {first} then {received - first} ({len(again)} prompts asked "
          f"again); records {records}; llm {llm}; rows written {sum(ids.values())}")
    assert all(v == 1 for v in ids.values()), {k: v for k, v in ids.items() if v != 1}
    assert records["extracted"] == records["loaded"] + records["quarantined"] + records["skipped"]
    assert records["loaded"] == len(ids)
    assert llm["calls"] == received
    assert llm["calls_this_attempt"] == received - first
    # Only the calls in flight at the kill (sent, unanswered) may be asked again.
    assert len(again) == llm["calls_repeated"], (
        f"{len(again)} prompts asked again, {llm['calls_repeated']} counted as repeated")
