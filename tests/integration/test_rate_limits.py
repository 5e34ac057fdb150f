"""Rate limits wait, they do not quarantine: every header form a server uses to say how long,
waited out by the whole run; 429s bounded by time, not by a count."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web

from core import cli
from core.errors import ProviderError
from core.llm.retry import RetryPolicy, call_with_retries
from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.support.threaded_app import ThreadedApp


class ThrottlingEndpoint(ThreadedApp):
    """OpenAI chat completions on 127.0.0.1 that answers 429 with `headers()` for the first
    `refusals` requests, then answers each prompt's `reply:` line."""

    def __init__(self, refusals: int, headers) -> None:
        self.refusals, self.headers = refusals, headers
        self.seen: list[float] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        super().__init__(app)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(time.monotonic())
        if len(self.seen) <= self.refusals:
            return web.Response(status=429, content_type="application/json", headers=self.headers(),
                                body=json.dumps({"error": {"message": "Rate limit reached",
                                                           "type": "rate_limit_error"}}).encode())
        text = body["messages"][-1]["content"]
        answer = text.split("reply:", 1)[1].strip() if "reply:" in text else "{}"
        return web.json_response({"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": answer}}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5}})


def soon(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


FORMS = {
    "retry-after": lambda: {"retry-after": "1"},
    "retry-after-ms": lambda: {"retry-after-ms": "900"},
    "llm_provider-retry-after": lambda: {"llm_provider-retry-after": "1"},
    "x-ratelimit-reset-requests": lambda: {"x-ratelimit-remaining-requests": "0",
                                           "x-ratelimit-reset-requests": "0m1s"},
    "anthropic-ratelimit-requests-reset": lambda: {"anthropic-ratelimit-requests-remaining": "0",
                                                   "anthropic-ratelimit-requests-reset": soon(1)},
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_rate_limit_form_is_waited_out(form, tmp_path, capsys):
    rows = [{"id": f"r{i}", "text": f"t{i}", "expected": "positive", "reply": reply("positive")}
            for i in range(10)]
    # Six refusals: more than max_retries allows, so only waiting (not counting) gets through.
    with ThrottlingEndpoint(6, FORMS[form]) as endpoint:
        pipeline = write_pipeline(tmp_path / "p", rows=rows,
                                  base_url=f"http://127.0.0.1:{endpoint.port}/v1",
                                  transform={"concurrency": 2, "max_retries": 1})
        started = time.monotonic()
        code = cli.main(["--run", str(pipeline), "--json"])
        took = time.monotonic() - started
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["records"]["quarantined"] == 0 and summary["records"]["skipped"] == 0
    assert len(read_jsonl(pipeline.parent / "out" / "results.jsonl")) == 10
    assert summary["llm"]["throttled"] == 6
    # The server's wait was honoured: the run held its calls for about the second asked.
    assert took >= 0.8


async def test_429s_are_bounded_by_time_not_by_count():
    slept: list[float] = []
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= 30:
            raise ProviderError("HTTP 429: slow down", retryable=True, status=429, retry_after=2.0)
        return "ok"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    result, attempts = await call_with_retries(attempt, RetryPolicy(max_retries=2, max_throttle_wait_s=600),
                                               sleep=sleep, rand=lambda: 0.0)
    assert result == "ok" and attempts == 31 and sum(slept) == 60.0  # far past max_retries=2

    calls = 0
    with pytest.raises(ProviderError, match=r"rate limited: waited 10 s .* transform.rate_limit.max_wait_s"):
        await call_with_retries(attempt, RetryPolicy(max_retries=2, max_throttle_wait_s=11),
                                sleep=sleep, rand=lambda: 0.0)


# ---------------------------------------------------------------- through the LiteLLM proxy


@pytest.mark.timeout(300)
def test_an_upstream_429_forwarded_by_the_proxy_is_waited_out(tmp_path, capsys, litellm_proxy,
                                                              proxy_upstream):
    """The proxy passes the vendor's 429 on with its own headers (`llm_provider-retry-after`
    beside or instead of `retry-after`): the run waits, nothing is quarantined."""
    rows = [{"id": f"r{i}", "text": f"t{i}", "expected": "positive", "reply": reply("positive")}
            for i in range(10)]
    proxy_upstream.script(["429:1"] * 6)  # more than max_retries allows: only waiting gets through
    pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=litellm_proxy.base_url,
                              transform={"api_key": litellm_proxy.api_key, "concurrency": 2,
                                         "max_retries": 1})
    started = time.monotonic()
    code = cli.main(["--run", str(pipeline), "--json"])
    took = time.monotonic() - started
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    assert summary["records"]["quarantined"] == 0 and summary["records"]["skipped"] == 0
    assert len(read_jsonl(pipeline.parent / "out" / "results.jsonl")) == 10
    assert summary["llm"]["throttled"] == 6
    assert took >= 0.8  # the upstream's second was honoured through the proxy
