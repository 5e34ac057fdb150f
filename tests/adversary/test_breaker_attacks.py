"""Attacks on "a run that cannot work stops" (the circuit breaker)."""

from __future__ import annotations


import pytest

from tests.adversary.hostile import Hostile, loom, ok, openai_error, prompt_text
from tests.pipelines import reply, write_pipeline


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"r{i:03d}", "text": f"review {i}", "reply": reply("positive"),
             "expected": "positive"} for i in range(n)]


@pytest.mark.parametrize("concurrency", [1, 8])
def test_repeated_openai_500_with_a_request_id_trips_the_breaker(tmp_path, concurrency):
    """Guarantee 1: "one 5xx repeated" must open the breaker within a few calls. OpenAI's real
    500 names a request id (`req_` + hex): the breaker's signature does not mask `req_<hex>`
    (no word boundary after the underscore), so every call looks different, the breaker never
    opens and the run grinds through every record with all its retries (40 records: 80
    requests, every record skipped). Then (CI): at concurrency 1 a call's backoff freed its slot
    for the next record, whose first attempt failed as fast, so how many requests were made
    before the breaker opened grew with the backoffs (8 or 9 of a promised 6); calls now wait
    while another retries after the endpoint failed it: max(failures, concurrency) calls."""
    import uuid

    def handler(n, body):
        return openai_error(500, "The server had an error while processing your request. Sorry "
                                 "about that! (Please include the request ID "
                                 f"req_{uuid.uuid4().hex} in your message.)")

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(40), base_url=server.base_url,
                                  transform={"concurrency": concurrency, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, err
    assert summary["status"] == "failed"
    # max(3 failures, concurrency) calls of two attempts each, and nothing more
    bound = max(3, concurrency) * 2
    assert requests <= bound, f"{requests} requests to a server that answered 500 to every one"


def test_a_judge_whose_endpoint_fails_every_call_trips_the_breaker(tmp_path):
    """Guarantee 1: every call of a run (transform and judges) reports to one breaker, and a run
    whose calls keep failing the same way stops. When only the LLM judge's endpoint is down, the
    transform's success on each record resets the breaker's streak before the judge fails again,
    so the breaker does not open until every record has been tried: 30 records make 90
    requests (a transform call and both judge attempts each) before the run ends failed."""
    def handler(n, body):
        if "Classify this review" in prompt_text(body):
            return ok(reply("positive"))
        return openai_error(503, "upstream unavailable", "server_error")

    with Hostile(handler) as server:
        pipeline = write_pipeline(
            tmp_path / "p", rows=rows(30), base_url=server.base_url,
            transform={"concurrency": 1, "max_retries": 1},
            evaluate={"evaluators": [{"name": "judged", "type": "custom_criteria",
                                      "criteria": "Accurate sentiment"}]})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, (code, err)
    assert summary["status"] == "failed"
    assert summary["records"]["quarantined"] == 0
    assert requests <= 15, f"{requests} requests: the breaker never opened"


def test_an_identical_408_on_every_call_trips_the_breaker(tmp_path):
    """Guarantee 1: "an identical 4xx repeated" opens the breaker within a few calls. A gateway
    answering every call `408 Request timed out` (or 409) is classed THROTTLED, which the
    breaker never counts: the run tries every record with all its retries (60 requests for 30
    records) and only then ends failed."""
    def handler(n, body):
        return openai_error(408, "Request timed out", "timeout")

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(30), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, err
    assert "stopped after" in (summary["status_reason"] or ""), summary["status_reason"]
    # Three calls failing the same way, each with its retries, and a call already started.
    assert requests <= 10, f"{requests} requests to a server that answered 408 to every one"


def test_a_429_the_server_marks_not_retryable_is_still_waited_out(tmp_path):
    """Guarantee 4: any 429 is waited out (bounded by rate_limit.max_wait_s), never given up at
    once. A 429 `rate_limit_exceeded` with `retry-after: 1` that also carries
    `x-should-retry: false` (a gateway's hint) is not retried at all: each record gets one
    request and is skipped, and the run ends failed with nothing loaded, although waiting one
    second would have done the work."""
    def handler(n, body):
        if n <= 2:
            return openai_error(429, "Rate limit reached for requests", "requests",
                                "rate_limit_exceeded",
                                {"x-should-retry": "false", "retry-after": "1"})
        return ok(reply("positive"))

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(4), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert (code, summary["status"]) == (0, "success"), (code, summary["status_reason"])
    assert summary["records"]["loaded"] == 4


def test_a_gateway_answering_200_with_an_error_body_quarantines_nothing(tmp_path):
    """Guarantees 1 and 2: a failure that is the provider's, not the record's, quarantines
    nothing, and a run whose every call fails the same way stops within a few calls. A gateway
    that answers HTTP 200 with `{"error": {...}}` (OpenRouter and some proxies pass upstream
    failures on this way) is classed as the record's own (`classify` returns RECORD for any
    200): all 30 records are quarantined ("answered without choices[0].message"), 60 requests
    are made, and the breaker never opens."""
    def handler(n, body):
        return 200, {}, {"error": {"message": "Upstream provider returned an error: 401 "
                                              "Incorrect API key provided", "code": 401}}

    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(30), base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, err
    assert summary["records"]["quarantined"] == 0, summary["status_reason"]
    assert summary["records"]["skipped"] == 30
    assert requests <= 8, f"{requests} requests"


def test_llama_cpp_context_size_refusals_are_the_records_own(tmp_path):
    """Guarantee 2: a record is quarantined for what is its own (a prompt too long for the
    model), and skipped only when its provider failed. llama.cpp's server (a provider Loom
    supports) refuses an over-long prompt with HTTP 400 `exceed_context_size_error` ("the
    request exceeds the available context size, try increasing it"), which `classify` does not
    know as the record's (REQUEST): the 3 long records are skipped as "the provider failed",
    nothing is quarantined, the run ends partial (exit 3, a replace destination held) saying
    `--resume` processes them, which can only fail the same way again."""
    def handler(n, body):
        if "LONG" in prompt_text(body):
            return 400, {}, {"error": {"code": 400, "message": "the request exceeds the available "
                                       "context size, try increasing it",
                                       "type": "exceed_context_size_error",
                                       "n_prompt_tokens": 9000 + n, "n_ctx": 4096}}
        return ok(reply("positive"))

    data = rows(20)
    for row in data[2:5]:
        row["text"] = "LONG " * 50
    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=data, base_url=server.base_url,
                                  transform={"concurrency": 1, "max_retries": 1})
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert summary["records"] == {"extracted": 20, "loaded": 17, "quarantined": 3, "skipped": 0}, \
        (code, summary["status_reason"])


def test_anthropic_error_event_in_a_200_quarantines_nothing(tmp_path):
    """Guarantees 1 and 2, Anthropic's shape: an `overloaded_error` delivered as
    `{"type": "error", "error": {...}}` in an HTTP 200 (as Anthropic sends errors that arise
    after the response started) is the provider's failure, yet every record is quarantined
    ("answered without content") after 3 attempts each: 60 requests for 20 records, the breaker
    never opens."""
    def handler(n, body):
        return 200, {}, {"type": "error", "error": {"type": "overloaded_error",
                                                     "message": "Overloaded"}}

    with Hostile(handler) as server:
        pipeline = write_pipeline(
            tmp_path / "p", rows=rows(20), base_url=server.base_url.removesuffix("/v1"),
            transform={"provider": "anthropic", "model": "claude-haiku-4-5", "max_tokens": 50,
                       "concurrency": 1, "max_retries": 2})
        code, summary, err = loom("--run", str(pipeline), "--json")
        requests = server.requests
    assert code == 1, err
    assert summary["records"]["quarantined"] == 0, summary["status_reason"]
    assert requests <= 15, f"{requests} requests"  # 3 calls of 3 attempts, and one started
