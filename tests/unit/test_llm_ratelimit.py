"""Token buckets, adaptive concurrency and the budget, on a clock the tests move themselves."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import BudgetExceeded
from core.llm.budget import Budget
from core.llm.pricing import ModelRate, Pricing
from core.llm.ratelimit import BURST_S, AdaptiveLimit, LimitsRegistry, TokenBucket
from tests.support.fake_time import FakeTime


# ---------------------------------------------------------------- token buckets


async def test_a_bucket_allows_a_short_burst_then_spreads_the_rest_over_the_minute():
    time = FakeTime()
    bucket = TokenBucket(60, clock=time.clock, sleep=time.sleep)  # one a second
    assert bucket.capacity == BURST_S
    for _ in range(int(BURST_S)):
        assert await bucket.take(1) == 0.0  # the burst: no wait
    for _ in range(10):
        await bucket.take(1)
    assert time.now == pytest.approx(10.0)  # then exactly the rate: 10 more in 10 s


async def test_waiters_are_served_in_order_and_the_rate_holds_under_concurrency():
    time = FakeTime()
    bucket = TokenBucket(600, clock=time.clock, sleep=time.sleep)  # 10 a second, burst 60
    order: list[int] = []

    async def take(n: int) -> None:
        await bucket.take(1)
        order.append(n)

    await asyncio.gather(*(take(n) for n in range(160)))
    assert order == list(range(160))
    assert time.now == pytest.approx(10.0)  # 160 - 60 burst = 100 at 10/s


async def test_a_request_bigger_than_the_bucket_waits_for_a_full_bucket_then_goes_into_debt():
    time = FakeTime()
    bucket = TokenBucket(6000, clock=time.clock, sleep=time.sleep)  # 100 tokens/s, holds 600
    await bucket.take(1000)  # bigger than the bucket: allowed when full
    assert time.now == 0.0 and bucket.level == pytest.approx(-400)
    await bucket.take(100)  # pays the debt first: 500 tokens at 100/s
    assert time.now == pytest.approx(5.0)


async def test_adjust_gives_back_an_overestimate_and_charges_an_underestimate():
    time = FakeTime()
    bucket = TokenBucket(6000, clock=time.clock, sleep=time.sleep)
    await bucket.take(600)
    bucket.adjust(400)  # the call used 200 of the 600 it reserved
    assert bucket.level == pytest.approx(400)
    bucket.adjust(-500)  # a call that used more than estimated
    assert bucket.level == pytest.approx(-100)


# ---------------------------------------------------------------- adaptive concurrency


async def test_a_429_halves_the_limit_and_successes_grow_it_back_by_one_per_window():
    limit = AdaptiveLimit(16)
    ticket = await limit.acquire()
    limit.release()
    assert limit.throttled(ticket) is True
    assert (limit.limit, limit.lowest, limit.cuts) == (8, 8, 1)
    for _ in range(8):
        limit.succeeded()
    assert limit.limit == 9  # one full window of successes: one more slot
    for _ in range(9 + 10 + 11 + 12 + 13 + 14 + 15):
        limit.succeeded()
    assert limit.limit == 16  # back at the configured maximum, never past it
    for _ in range(100):
        limit.succeeded()
    assert limit.limit == 16


async def test_a_burst_of_429s_from_requests_sent_together_cuts_once():
    limit = AdaptiveLimit(32)
    tickets = [await limit.acquire() for _ in range(20)]
    for ticket in tickets:
        limit.release()
    cuts = [limit.throttled(ticket) for ticket in tickets]
    assert cuts.count(True) == 1 and limit.limit == 16
    later = await limit.acquire()  # sent after the cut: its 429 cuts again
    limit.release()
    assert limit.throttled(later) is True and limit.limit == 8


async def test_the_limit_bounds_holders_and_a_lower_limit_applies_to_new_ones():
    limit = AdaptiveLimit(4)
    held = [await limit.acquire() for _ in range(4)]
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    assert not waiter.done() and limit.in_flight == 4
    limit.throttled(held[0])  # now 2: releasing one of 4 still leaves 3 in flight
    limit.release()
    await asyncio.sleep(0)
    assert not waiter.done()
    limit.release()
    limit.release()  # in flight 1 < 2: the waiter gets its slot
    await asyncio.sleep(0)
    assert waiter.done() and limit.in_flight == 2


async def test_a_cancelled_waiter_leaves_no_slot_behind():
    limit = AdaptiveLimit(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    limit.release()
    assert limit.in_flight == 0
    await limit.acquire()
    assert limit.in_flight == 1


def test_one_set_of_limits_per_provider_and_base_url():
    registry = LimitsRegistry()
    first = registry.get("openai", "https://a/v1", concurrency=8, requests_per_minute=100)
    assert registry.get("openai", "https://a/v1", concurrency=99) is first  # the judge shares it
    assert registry.get("openai", "https://b/v1", concurrency=8) is not first
    assert first.requests is not None and first.tokens is None
    assert len(registry.all()) == 2


# ---------------------------------------------------------------- budget


PRICES = Pricing(prices={"m": ModelRate(1.0, 2.0)})  # $1 / $2 per 1M tokens


def test_a_budget_reserves_worst_cases_and_refuses_the_call_that_could_pass_it():
    budget = Budget(0.009, pricing=PRICES)
    first = budget.reserve("m", 1000, 1000)  # $0.003
    second = budget.reserve("m", 1000, 1000)
    assert budget.reserved == pytest.approx(0.006)
    budget.settle(first, 0.001)  # it cost less than its worst case
    assert (budget.spent, budget.reserved) == (pytest.approx(0.001), pytest.approx(0.003))
    budget.reserve("m", 1000, 1000)  # 0.001 + 0.003 + 0.003 = 0.007
    with pytest.raises(BudgetExceeded) as refused:
        budget.reserve("m", 1000, 1000)  # 0.001 spent + 0.006 reserved + 0.003 > 0.009
    assert "budget $0.009 reached" in str(refused.value)
    assert budget.exceeded is not None
    budget.settle(second, None)  # a call that failed: nothing billed, reservation released
    with pytest.raises(BudgetExceeded):  # once reached, the run stops: no more calls
        budget.reserve("m", 1, 1)


def test_no_budget_reserves_nothing_and_an_unpriced_model_is_said_once():
    warnings: list[str] = []
    assert Budget(None, pricing=PRICES).reserve("m", 10**9, 10**9) == 0.0
    budget = Budget(1.0, pricing=PRICES, on_warning=warnings.append)
    assert budget.reserve("mystery-model", 1000, 1000) == 0.0
    assert budget.reserve("mystery-model", 1000, 1000) == 0.0
    assert len(warnings) == 1 and "cannot be enforced for model mystery-model" in warnings[0]


async def test_a_sibling_client_shares_the_budget_and_takes_limits_from_the_registry():
    from core.llm.client import LLMClient
    from core.llm.replay import ReplayProvider

    class Endpoint(ReplayProvider):
        def __init__(self, base_url: str) -> None:  # no cassette needed: never called here
            self.base_url = base_url

    registry = LimitsRegistry()
    budget = Budget(1.0, pricing=PRICES)
    run = LLMClient(Endpoint("http://a"), pricing=PRICES, concurrency=12, registry=registry,
                    budget=budget)
    judge = run.sibling(Endpoint("http://b"))
    same_endpoint = run.sibling(Endpoint("http://a"))
    assert judge.budget is budget
    assert judge.limits is not run.limits and judge.limits.concurrency.maximum == 12
    assert same_endpoint.limits is run.limits  # one endpoint, one set of limits
