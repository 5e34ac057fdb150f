"""Attacks on "rate limits wait, they do not quarantine", bounded by rate_limit.max_wait_s."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.adversary.hostile import Hostile, loom, ok
from tests.pipelines import reply, write_pipeline


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"r{i:03d}", "text": f"review {i}", "reply": reply("positive"),
             "expected": "positive"} for i in range(n)]


def test_a_used_up_limit_on_a_200_is_bounded_by_max_wait_s(tmp_path):
    """Guarantee 2: rate limits are bounded by time: one call may wait up to
    rate_limit.max_wait_s in all, then its record is skipped (resumable). A server whose every
    200 answer says `x-ratelimit-remaining-requests: 0`, `x-ratelimit-reset-requests: 6m0s`
    holds every later call for 6 minutes (client.py: `limits.resume_at` is set to
    min(limit_reset_s, max_retry_after_s = 900 s), and the pause in `attempt()` is not counted
    against max_throttle_wait_s), although max_wait_s is 2 s: after 30 s the run (30 records)
    has not ended."""
    headers = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0",
               "x-ratelimit-reset-requests": "6m0s"}

    def handler(n, body):
        return 200, headers, ok(reply("positive"))[2]

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(30), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1,
                                             "rate_limit": {"max_wait_s": 2}})
        started = time.monotonic()
        try:
            code, summary, err = loom("--run", str(pipeline), "--json", timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run had not ended after {time.monotonic() - started:.0f} s "
                        f"with max_wait_s 2 ({server.requests} requests)")
    assert summary is not None and summary["records"]["quarantined"] == 0, (code, err)


def test_a_used_up_limit_holds_calls_already_queued_for_a_slot(tmp_path):
    """Guarantee 2 / docs/how-to/cost-and-limits.md "Limits": an answer that says a limit is used up
    (`x-ratelimit-remaining-requests: 0`) holds new calls until it resets, before any 429. A
    server allowing one request per 3 s says so on each answer (remaining 0, reset 3s) and
    answers 429 to a request that comes early. At concurrency 1 the calls of the next records
    have already passed the hold check in client.py `attempt()` (`pause = limits.resume_at -
    before` is read before `concurrency.acquire()`) while they waited for the slot, so they
    are sent the moment the slot frees, right after the answer that said the limit is used
    up: the server has to refuse them with 429s."""
    import threading

    lock = threading.Lock()
    state = {"next_ok": 0.0, "throttled": 0}

    def handler(n, body):
        with lock:
            now = time.monotonic()
            if now < state["next_ok"]:
                state["throttled"] += 1
                wait = state["next_ok"] - now
                return 429, {"retry-after": f"{wait:.3f}"}, {
                    "error": {"message": "Rate limit reached for requests", "type": "requests",
                              "code": "rate_limit_exceeded"}}
            state["next_ok"] = now + 3.0
        return 200, {"x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0",
                     "x-ratelimit-reset-requests": "3s"}, ok(reply("positive"))[2]

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(4), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json", timeout=60)
    assert (code, summary["records"]["loaded"]) == (0, 4), (code, err)
    assert state["throttled"] == 0, \
        f"{state['throttled']} requests sent while the server had said its limit was used up"
