"""LLMClient against the loopback server: retries, cache, accounting, recording, concurrency.

Waits go through an injected clock and sleep, so a test that checks "waited at least the
server's Retry-After" neither sleeps for real nor depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.errors import ProviderError
from core.llm.base import LLMRequest
from core.llm.client import LLMClient
from core.llm.openai import OpenAIProvider
from core.llm.pricing import Pricing
from core.llm.replay import CassetteRecorder, ReplayProvider
from core.llm.retry import RetryPolicy
from tests.support.fake_time import FakeTime
from tests.support.llm_server import LLMServer


@pytest.fixture
def llm_server():
    # Same as the shared conftest fixture; kept here so these tests stand on their own.
    with LLMServer(latency_s=0.0, seed=7, strict=True) as server:
        yield server


SCHEMA = {"type": "object", "properties": {"sentiment": {"type": "string"}}}


class DictCache:
    """The ResponseCache protocol over a dict (the store implements it over its llm_cache table)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.puts: list[tuple[str, str, str]] = []

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    async def cache_put(self, key: str, value: dict[str, Any], *, provider: str, model: str,
                        ttl_s: float | None = None) -> None:
        self.entries[key] = value
        self.puts.append((key, provider, model))


class BrokenCache:
    async def cache_get(self, key: str) -> dict[str, Any] | None:
        raise OSError("database is locked")

    async def cache_put(self, key: str, value: dict[str, Any], *, provider: str, model: str,
                        ttl_s: float | None = None) -> None:
        raise OSError("database is locked")


class ManualTime:
    """A clock the test moves by hand; sleepers wake when it passes their deadline."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeping: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.sleeping.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self.sleeping):
            if deadline <= self.now and not future.done():
                future.set_result(None)
                self.sleeping.remove((deadline, future))


async def eventually(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


def request(reply: str = '{"sentiment": "positive"}', **fields: Any) -> LLMRequest:
    fields.setdefault("model", "gpt-4o-mini")
    return LLMRequest(messages=[{"role": "user", "content": f"Classify.\nreply: {reply}"}], **fields)


def make_client(server, *, time: FakeTime | ManualTime | None = None, timeout_s: float = 5,
                base_url: str | None = None, **options: Any) -> LLMClient:
    time = time or FakeTime(start=1000.0)
    provider = OpenAIProvider(api_key="sk-test-key-0123456789", base_url=base_url or server.base_url,
                              timeout_s=timeout_s, concurrency=options.get("concurrency", 8))
    options.setdefault("pricing", Pricing())
    return LLMClient(provider, sleep=time.sleep, clock=time.clock, rand=lambda: 0.5, **options)


# ---------------------------------------------------------------- retries


async def test_429_waits_at_least_the_retry_after_hint(llm_server):
    time = FakeTime(start=1000.0)
    llm_server.script(["429:7", "ok"])
    async with make_client(llm_server, time=time) as client:
        response, call = await client.complete(request())
    assert response.text == '{"sentiment": "positive"}'
    assert call.attempts == 2
    assert time.sleeps and time.sleeps[0] >= 7.0
    assert sum(time.sleeps) == pytest.approx(7.0)  # the hint, not the hint twice
    assert llm_server.count == 2


@pytest.mark.parametrize("failure", ["500", "529", "malformed", "empty", "reset"])
async def test_a_transient_failure_then_success(llm_server, failure):
    time = FakeTime(start=1000.0)
    llm_server.script([failure, "ok"])
    async with make_client(llm_server, time=time) as client:
        response, call = await client.complete(request())
    assert response.text == '{"sentiment": "positive"}'
    assert call.attempts == 2
    assert time.sleeps == [pytest.approx(0.25)]  # rand 0.5 x base 0.5 s: the first backoff
    assert llm_server.count == 2


async def test_a_timeout_then_success(llm_server):
    llm_server.faults.timeout_sleep_s = 5
    llm_server.script(["timeout", "ok"])
    async with make_client(llm_server, timeout_s=0.2) as client:
        response, call = await client.complete(request())
    assert call.attempts == 2
    assert response.text == '{"sentiment": "positive"}'


async def test_a_client_error_fails_at_once_with_the_api_message(llm_server):
    time = FakeTime(start=1000.0)
    llm_server.script(["400:Unsupported value: 'temperature'"])
    async with make_client(llm_server, time=time) as client:
        with pytest.raises(ProviderError) as caught:
            await client.complete(request())
    assert caught.value.retryable is False
    assert "Unsupported value: 'temperature'" in str(caught.value)
    assert time.sleeps == []
    assert llm_server.count == 1


async def test_exhausted_retries_raise_with_the_last_failure_as_cause(llm_server):
    time = FakeTime(start=1000.0)
    llm_server.script(["500", "500", "500", "ok"])
    async with make_client(llm_server, time=time, max_retries=2) as client:
        with pytest.raises(ProviderError) as caught:
            await client.complete(request())
    error = caught.value
    assert "gave up after 3 attempts" in str(error)
    assert error.status == 500
    assert isinstance(error.__cause__, ProviderError) and error.__cause__.status == 500
    assert len(time.sleeps) == 2
    assert llm_server.count == 3


async def test_random_faults_are_all_retried_away(llm_server):
    llm_server.faults.rate_500 = 0.2
    llm_server.faults.rate_malformed = 0.1
    llm_server.faults.rate_reset = 0.1
    async with make_client(llm_server, max_retries=10) as client:
        results = await asyncio.gather(*(client.complete(request(f'{{"n": {i}}}')) for i in range(40)))
    assert [r.text for r, _ in results] == [f'{{"n": {i}}}' for i in range(40)]
    attempts = sum(call.attempts for _, call in results)
    assert attempts == llm_server.count > 40


async def test_a_retry_after_pauses_new_requests_too(llm_server):
    time = ManualTime()
    llm_server.script(["429:30"])
    async with make_client(llm_server, time=time) as client:
        first = asyncio.create_task(client.complete(request('{"n": 1}')))
        await eventually(lambda: time.sleeping, "the first request backs off")
        assert time.sleeping[0][0] >= time.now + 30
        second = asyncio.create_task(client.complete(request('{"n": 2}')))
        await eventually(lambda: len(time.sleeping) == 2, "the second request waits too")
        assert llm_server.count == 1  # the second one has not been sent
        time.advance(30)
        (one, _), (two, call_two) = await asyncio.gather(first, second)
    assert (one.text, two.text) == ('{"n": 1}', '{"n": 2}')
    assert call_two.attempts == 1
    assert llm_server.count == 3


# ---------------------------------------------------------------- cache


async def test_a_cache_hit_makes_no_call_and_costs_nothing(llm_server):
    cache = DictCache()
    async with make_client(llm_server, cache=cache) as client:
        first, paid = await client.complete(request())
        second, free = await client.complete(request())
    assert llm_server.count == 1
    assert second.text == first.text
    assert paid.cached is False and paid.cost_usd and paid.cost_usd > 0
    assert free.cached is True and free.cost_usd == 0.0 and free.attempts == 0
    assert free.latency_s == pytest.approx(0.0)
    assert cache.puts == [(cache.puts[0][0], "openai", "gpt-4o-mini")]


@pytest.mark.parametrize("change", [
    {"model": "gpt-4.1-mini"},
    {"temperature": 0.7},
    {"reply": '{"sentiment": "negative"}'},
    {"output_schema": SCHEMA},
    {"max_tokens": 99},
])
async def test_the_cache_key_changes_with_what_decides_the_answer(llm_server, change):
    cache = DictCache()
    async with make_client(llm_server, cache=cache) as client:
        await client.complete(request())
        await client.complete(request(**change))
    assert llm_server.count == 2
    assert len(cache.entries) == 2


async def test_the_cache_key_changes_with_the_base_url(llm_server):
    cache = DictCache()
    async with make_client(llm_server, cache=cache) as client:
        await client.complete(request())
    other = llm_server.base_url.replace("127.0.0.1", "localhost")
    async with make_client(llm_server, cache=cache, base_url=other) as client:
        _, call = await client.complete(request())
    assert call.cached is False
    assert llm_server.count == 2


async def test_no_cache_reads_nothing_but_refreshes_the_entry(llm_server):
    cache = DictCache()
    async with make_client(llm_server, cache=cache) as client:
        await client.complete(request())
    async with make_client(llm_server, cache=cache, use_cache=False) as client:
        _, call = await client.complete(request())
    assert call.cached is False
    assert llm_server.count == 2 and len(cache.puts) == 2


async def test_expired_entries_are_fetched_again(llm_server):
    cache = DictCache()
    async with make_client(llm_server, cache=cache, cache_ttl_s=60) as client:
        await client.complete(request())
        (entry,) = cache.entries.values()
        entry["cached_at"] -= 3600
        _, call = await client.complete(request())
    assert call.cached is False
    assert llm_server.count == 2


async def test_identical_requests_in_flight_share_one_call(llm_server):
    llm_server.latency_s = 0.05
    async with make_client(llm_server, cache=DictCache()) as client:
        results = await asyncio.gather(*(client.complete(request()) for _ in range(5)))
    assert llm_server.count == 1
    assert sorted(call.cached for _, call in results) == [False, True, True, True, True]


async def test_callers_cancelled_with_the_call_they_share_stay_cancelled(llm_server):
    """A run stopping cancels every worker at once: the one making the shared call and those
    waiting on it. The waiters must end cancelled too, not make calls of their own."""
    llm_server.latency_s = 0.2
    async with make_client(llm_server, cache=DictCache()) as client:
        tasks = [asyncio.ensure_future(client.complete(request())) for _ in range(4)]
        while llm_server.count < 1:
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
        assert all(task.cancelled() for task in tasks)
    assert llm_server.count == 1


async def test_a_failing_cache_warns_once_and_calls_the_model(llm_server):
    warnings: list[str] = []
    async with make_client(llm_server, cache=BrokenCache(), on_warning=warnings.append) as client:
        for _ in range(3):
            response, _ = await client.complete(request())
            assert response.text
    assert llm_server.count == 3
    assert len(warnings) == 2  # one for reading, one for writing
    assert "database is locked" in warnings[0]


# ---------------------------------------------------------------- accounting


async def test_a_call_is_accounted_with_tokens_cost_and_stage(llm_server):
    llm_server.cached_tokens = 2
    pricing = Pricing()
    async with make_client(llm_server, pricing=pricing) as client:
        response, call = await client.complete(request(stage="evaluate"))
    assert (call.stage, call.provider, call.model) == ("evaluate", "openai", "gpt-4o-mini")
    assert (call.input_tokens, call.output_tokens, call.cached_tokens) == \
        (response.input_tokens, response.output_tokens, 2)
    assert call.cost_usd == pytest.approx(pricing.cost("gpt-4o-mini", response.input_tokens,
                                                       response.output_tokens, 2))
    assert call.attempts == 1 and call.cached is False


async def test_an_unknown_model_costs_none_with_one_warning(llm_server):
    warnings: list[str] = []
    async with make_client(llm_server, on_warning=warnings.append) as client:
        for _ in range(3):
            _, call = await client.complete(request(model="my-local-llama"))
            assert call.cost_usd is None
    assert len(warnings) == 1
    assert "my-local-llama" in warnings[0] and "pricing:" in warnings[0]
    assert client.warnings == warnings


async def test_a_model_priced_in_the_config_is_costed(llm_server):
    pricing = Pricing({"my-local-llama": {"input": 1.0, "output": 2.0}})
    async with make_client(llm_server, pricing=pricing) as client:
        response, call = await client.complete(request(model="my-local-llama"))
    assert call.cost_usd == pytest.approx((response.input_tokens + 2 * response.output_tokens) / 1e6)


# ---------------------------------------------------------------- concurrency


@pytest.mark.parametrize("limit", [1, 3])
async def test_no_more_than_concurrency_requests_are_in_flight(llm_server, limit):
    llm_server.latency_s = 0.03
    async with make_client(llm_server, concurrency=limit) as client:
        await asyncio.gather(*(client.complete(request(f'{{"n": {i}}}')) for i in range(12)))
    assert llm_server.count == 12
    assert 1 <= llm_server.max_in_flight <= limit


async def test_high_concurrency_goes_through_several_pools(llm_server):
    llm_server.latency_s = 0.05
    async with make_client(llm_server, concurrency=48) as client:
        await asyncio.gather(*(client.complete(request(f'{{"n": {i}}}')) for i in range(96)))
    assert llm_server.count == 96
    assert llm_server.max_in_flight <= 48


# ---------------------------------------------------------------- recording and replay


async def test_recorded_calls_replay_offline_and_are_not_cached(llm_server, tmp_path):
    cassette = tmp_path / "cassette.jsonl"
    requests = [request('{"sentiment": "positive"}'), request('{"sentiment": "negative"}')]
    recorder = CassetteRecorder(cassette, note="recorded in a test")
    async with make_client(llm_server, recorder=recorder, cache=DictCache()) as client:
        originals = [await client.complete(r) for r in requests]
        await client.complete(requests[0])  # a cache hit: nothing new to record
    recorder.close()
    assert len(cassette.read_text().splitlines()) == 3  # header + two exchanges

    cache = DictCache()
    async with LLMClient(ReplayProvider(cassette), pricing=Pricing(), cache=cache) as replay:
        for r, (original, original_call) in zip(requests, originals):
            response, call = await replay.complete(r)
            assert response.text == original.text
            assert response.input_tokens == original.input_tokens
            assert call.provider == "replay" and call.cached is False
            # A replayed run is costed as the recorded calls were: a faithful rehearsal.
            assert call.cost_usd == pytest.approx(original_call.cost_usd)
    assert cache.entries == {}
    assert llm_server.count == 2


async def test_retry_policy_is_configurable(llm_server):
    time = FakeTime(start=1000.0)
    llm_server.script(["500", "500", "ok"])
    policy = RetryPolicy(max_retries=5, base_s=2.0, cap_s=3.0)
    async with make_client(llm_server, time=time, retry_policy=policy) as client:
        _, call = await client.complete(request())
    assert call.attempts == 3
    assert time.sleeps == [pytest.approx(1.0), pytest.approx(1.5)]  # 0.5 x min(3, 2 * 2^k)


# ---------------------------------------------------------------- limits and budget


async def test_requests_per_minute_spread_the_calls_over_the_minute(llm_server):
    time = FakeTime(start=1000.0)
    async with make_client(llm_server, time=time, requests_per_minute=60) as client:
        await asyncio.gather(*(client.complete(request(f'{{"n": {i}}}')) for i in range(10)))
    assert llm_server.count == 10
    assert sum(time.sleeps) == pytest.approx(4.0)  # a burst of 6, then one a second


async def test_tokens_per_minute_count_the_prompt_and_max_tokens(llm_server):
    time = FakeTime(start=1000.0)
    # 6,000 tokens a minute: 100 a second, a bucket of 600; each call reserves its ~20-token
    # prompt plus max_tokens 200, and gets back what it did not use.
    async with make_client(llm_server, time=time, tokens_per_minute=6000) as client:
        for i in range(6):
            await client.complete(request(f'{{"n": {i}}}', max_tokens=200))
        bucket = client.limits.tokens
        assert bucket is not None and bucket.level > 600 - 6 * 40  # the unused output came back
    assert time.sleeps == []  # never had to wait: the real usage was far below the ceiling


async def test_a_429_cuts_the_concurrency_the_whole_client_uses(llm_server):
    llm_server.script(["429:0", "429:0"])
    async with make_client(llm_server, concurrency=8) as client:
        await asyncio.gather(*(client.complete(request(f'{{"n": {i}}}')) for i in range(2)))
        limit = client.limits.concurrency
        assert limit.lowest == 4 and limit.cuts == 1  # two 429s sent together: one cut
        assert client.limits.stats.throttled == 2 and client.limits.stats.retries == 2


async def test_a_call_the_budget_cannot_afford_is_never_sent(llm_server):
    from core.errors import BudgetExceeded
    from core.llm.budget import Budget

    budget = Budget(0.00001, pricing=Pricing())
    async with make_client(llm_server, budget=budget) as client:
        _, call = await client.complete(request(max_tokens=10))  # worst case ~$0.000008
        with pytest.raises(BudgetExceeded):
            await client.complete(request('{"n": 2}', max_tokens=10))
    assert llm_server.count == 1
    assert budget.spent == pytest.approx(call.cost_usd) and budget.reserved == 0


async def test_a_cache_hit_keeps_what_the_answer_cost_when_it_was_made(llm_server):
    async with make_client(llm_server, cache=DictCache()) as client:
        _, paid = await client.complete(request())
        _, free = await client.complete(request())
    assert free.cost_usd == 0 and free.input_tokens == 0
    assert (free.list_input_tokens, free.list_output_tokens, free.list_cost_usd) == \
        (paid.input_tokens, paid.output_tokens, paid.cost_usd)
