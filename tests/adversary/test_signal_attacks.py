"""Attacks on a clean stop (SIGTERM) while the provider rate-limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.adversary.hostile import ROOT, Hostile, ok, openai_error
from tests.pipelines import reply, write_pipeline


def test_sigterm_while_rate_limited_stops_the_run(tmp_path):
    """Guarantees 1/3 and docs/reference/exit-codes.md's "ctrl+c (or SIGTERM) stops a run cleanly: records in
    flight finish, the rest are skipped ... recorded as cancelled". When the provider answers
    429 `retry-after: 10`, a SIGTERM does not stop the run: the records waiting out the rate
    limit keep waiting and asking again for up to rate_limit.max_wait_s (600 s) each, and the
    process is still sending requests 60 s later (8 requests before the signal, 35 after 90 s
    in a trial), so cron/Airflow's grace period ends in a SIGKILL instead of a `cancelled`
    run."""
    def handler(n, body):
        if n >= 5:
            return openai_error(429, "Rate limit reached", "requests", "rate_limit_exceeded",
                                {"retry-after": "10"})
        return ok(reply("positive"))

    rows = [{"id": f"r{i:03d}", "text": f"review {i}", "reply": reply("positive"),
             "expected": "positive"} for i in range(20)]
    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  transform={"concurrency": 2})
        proc = subprocess.Popen([sys.executable, "-m", "loom_tui.cli", "--run", str(pipeline),
                                 "--json"], cwd=ROOT, env=os.environ.copy(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while server.requests < 6:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            at_signal = server.requests
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running 60 s after SIGTERM; {server.requests - at_signal}"
                                     f" requests sent after the signal") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1
