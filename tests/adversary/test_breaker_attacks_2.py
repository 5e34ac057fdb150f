"""Attacks on "a run that cannot work stops" (the circuit breaker), second round."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.adversary.hostile import Hostile, loom, ok, openai_error
from tests.pipelines import reply, write_pipeline


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"r{i:03d}", "text": f"review {i}", "reply": reply("positive"),
             "expected": "positive"} for i in range(n)]


def test_an_identical_400_after_some_successes_quarantines_nothing(tmp_path):
    """Guarantee 1: calls that keep failing the same way ("one 5xx or 4xx repeated") stop the
    run with nothing quarantined for it, and `--resume` finishes the run once the cause is
    fixed. A gateway answers 5 calls, then every call `400 Invalid request: the gateway route is
    misconfigured` (the same words each time). The breaker does open on the third 400 (status
    failed, exit 1), but the first two records that got the 400 are QUARANTINED (processing.py
    `provider_cause`: a REQUEST-class 4xx is "the record's own" once `breaker.successes > 0`),
    so they need a person and the --resume after the gateway is fixed does not load them: 18
    of 20 records loaded, 2 left in quarantine for the endpoint's fault."""
    broken = {"on": True}

    def handler(n, body):
        if n <= 5 or not broken["on"]:
            return ok(reply("positive"))
        return openai_error(400, "Invalid request: the gateway route is misconfigured",
                            "invalid_request_error")

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(20), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
        assert (code, summary["status"]) == (1, "failed"), (code, err)
        first = summary["records"]
        broken["on"] = False
        code2, summary2, err2 = loom("--run", str(pipeline), "--json", "--resume",
                                     summary["run_id"])
    assert first["quarantined"] == 0, f"the endpoint's repeated 400 quarantined records: {first}"
    assert summary2 is not None and summary2["records"]["loaded"] == 20, (code2, summary2, err2)


def test_a_5xx_whose_text_names_a_different_upstream_each_time_trips_the_breaker(tmp_path):
    """Guarantee 1: "one 5xx repeated" opens the breaker within max(failures, concurrency) calls
    with their retries, even when the error text varies (ids, hostnames). A load balancer
    answers every call `503 no healthy upstream: pod inference-<name> is not ready`, where
    <name> is one of its replicas (letters only, as Kubernetes pod suffixes often are). The
    breaker's signature (failures.py `signature`) masks only words holding a digit, so each
    503 looks like a new failure, the streak never reaches 3, and all 30 records are tried with
    their retries: 60 requests instead of at most 6, ending failed with no "stopped after"."""
    pods = ["xkzqp", "bvtrm", "hwjcf", "qplsd", "zmnbg"]

    def handler(n, body):
        return openai_error(503, f"no healthy upstream: pod inference-{pods[n % len(pods)]} "
                                 "is not ready")

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(30), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, err
    assert requests <= 6, f"{requests} requests: the breaker never opened " \
                          f"({summary['status_reason']})"


def test_a_load_balancer_alternating_500_502_503_trips_the_breaker(tmp_path):
    """Guarantee 1: an endpoint that refuses every call stops the run within a few calls. A
    load balancer whose backends are all down answers each call 500, 502 or 503 in turn, with
    the same text. The breaker keys a SERVER failure by its status (failures.py `signature`
    starts with the status), so no two calls in a row "fail the same way": the streak never
    reaches 3 and every record is tried with all its retries (30 records: 60 requests), where
    a single repeated 5xx stops after 6."""
    def handler(n, body):
        return openai_error([500, 502, 503][n % 3], "upstream error")

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(30), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, err
    assert requests <= 12, f"{requests} requests: the breaker never opened " \
                           f"({summary['status_reason']})"


def test_a_down_endpoint_sending_a_long_retry_after_on_503_stops_in_bounded_time(tmp_path):
    """Guarantee 1 (and 2: waits are bounded by time, transform.rate_limit.max_wait_s): a run
    that cannot work stops within a few calls. An endpoint in maintenance answers every call
    `503` with `Retry-After: 3600`. Each retry waits min(Retry-After, 900 s) (retry.py
    `RetryPolicy.delay`, client.py `on_retry` holding every new request), whatever
    rate_limit.max_wait_s says (here 1 s): with max_retries 1 and the breaker at 3, the run
    only fails after 3 x 900 s = 45 minutes. Here it has not ended after 30 s."""
    def handler(n, body):
        return openai_error(503, "The service is down for maintenance",
                            headers={"retry-after": "3600"})

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(10), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1,
                                             "rate_limit": {"max_wait_s": 1}})
        started = time.monotonic()
        try:
            code, summary, err = loom("--run", str(pipeline), "--json", timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run had not stopped after {time.monotonic() - started:.0f} s "
                        f"({server.requests} requests)")
    assert code == 1, err


def test_a_judge_endpoint_refusing_every_call_with_one_400_quarantines_nothing(tmp_path):
    """Guarantee 1: "one 4xx repeated" stops the run with nothing quarantined for it. The
    transform's endpoint answers every call; the LLM judge's calls all get the same
    `400 Invalid request: route misconfigured` (the judge's endpoint has never answered one).
    The breaker opens on the third (failed, exit 1), but the two records whose judge got the
    first two 400s are QUARANTINED at evaluate: processing.py `_endpoint_answered` is
    `breaker.successes > 0`, counted over every stage, so the transform's successes make the
    judge's 400 "the record's own" (processing.py `provider_cause`)."""
    import json

    from tests.adversary.hostile import prompt_text

    def handler(n, body):
        if "Classify this review" in prompt_text(body):
            return ok(reply("positive"))
        return openai_error(400, "Invalid request: route misconfigured", "invalid_request_error")

    with Hostile(handler) as server:
        pipeline = write_pipeline(
            tmp_path / "p", rows=rows(20), base_url=server.base_url,
            transform={"concurrency": 1, "max_retries": 1},
            evaluate={"evaluators": [{"name": "judged", "type": "custom_criteria",
                                      "criteria": "Accurate sentiment"}]})
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert (code, summary["status"]) == (1, "failed"), (code, err)
    assert summary["records"]["quarantined"] == 0, json.dumps(summary["records"])


def test_an_endpoint_answering_every_call_with_empty_content_quarantines_nothing(tmp_path):
    """Guarantee 1 ("200 answers that are not answers"): calls that keep failing the same way
    stop the run within a few calls with nothing quarantined for it. A server whose every 200
    carries `"content": ""` (a broken chat template, a proxy that drops the text) is the
    endpoint's failure exactly as `"content": null` is: with null Loom opens the breaker
    after 3 calls (6 requests, 0 quarantined). With "" every one of the 20 records is sent,
    repaired once (a second paid call) and QUARANTINED ("output invalid after one repair: not
    JSON (Expecting value): ''"): 40 requests, 20 records needing a person, nothing for
    --resume."""
    def handler(n, body):
        return ok("")

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(20), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, err
    assert summary["records"]["quarantined"] == 0, (summary["records"], summary["status_reason"])
    assert requests <= 8, f"{requests} requests"
