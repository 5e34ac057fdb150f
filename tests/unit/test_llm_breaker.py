"""The breaker's gate: new calls wait while another call of their stage retries after the
endpoint failed it, so how many calls a broken endpoint sees does not grow with the backoffs."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import ProviderError
from core.llm.breaker import CircuitBreaker, CircuitOpen


def server_error() -> ProviderError:
    return ProviderError("HTTP 500: the server had an error", retryable=True, status=500)


async def test_a_new_call_waits_while_another_retries_after_a_server_error():
    breaker = CircuitBreaker(3)
    assert breaker.suspects(server_error())
    breaker.unsettle("transform")
    admitted = asyncio.create_task(breaker.admit("transform"))
    other_stage = asyncio.create_task(breaker.admit("judge"))
    await asyncio.sleep(0)
    assert not admitted.done()
    assert other_stage.done()  # a judge's calls do not wait for the transform's
    breaker.settle("transform")
    await asyncio.wait_for(admitted, 1)


async def test_waiting_calls_fail_at_once_when_the_retries_open_the_breaker():
    breaker = CircuitBreaker(1)
    breaker.unsettle("transform")
    waiting = asyncio.create_task(breaker.admit("transform"))
    await asyncio.sleep(0)
    breaker.failed(server_error(), "transform")
    with pytest.raises(CircuitOpen):
        await asyncio.wait_for(waiting, 1)


@pytest.mark.parametrize("status, message", [
    (429, "HTTP 429: rate limit reached"),
    (400, "HTTP 400: This model's maximum context length is 8192 tokens"),
])
def test_a_rate_limit_or_the_records_own_refusal_makes_nobody_wait(status, message):
    error = ProviderError(message, retryable=status == 429, status=status)
    assert not CircuitBreaker().suspects(error)
