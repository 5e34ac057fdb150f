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
