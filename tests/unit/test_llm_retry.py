"""The retry policy: full-jitter backoff, server hints, and which failures are tried again."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from core.errors import CassetteMiss, ProviderError
from core.llm.retry import RetryPolicy, call_with_retries
from core.llm.transport import parse_retry_after


def retryable(retry_after: float | None = None) -> ProviderError:
    return ProviderError("openai gpt-4o-mini: HTTP 503", retryable=True, status=503,
                         retry_after=retry_after)


def test_the_ceiling_doubles_up_to_the_cap():
    policy = RetryPolicy(base_s=0.5, cap_s=20.0)
    ceilings = [policy.delay(n, retryable(), rand=lambda: 1.0) for n in range(1, 9)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


def test_full_jitter_draws_below_the_ceiling():
    policy = RetryPolicy(base_s=1.0, cap_s=10.0)
    assert policy.delay(3, retryable(), rand=lambda: 0.0) == 0.0
    assert policy.delay(3, retryable(), rand=lambda: 0.25) == pytest.approx(1.0)


def test_a_larger_server_hint_wins_and_a_smaller_one_does_not_shorten_backoff():
    policy = RetryPolicy(base_s=1.0, cap_s=10.0)
    assert policy.delay(1, retryable(retry_after=7.0), rand=lambda: 0.5) == 7.0
    assert policy.delay(4, retryable(retry_after=0.1), rand=lambda: 0.5) == pytest.approx(4.0)


def test_an_absurd_hint_is_trimmed():
    policy = RetryPolicy(max_retry_after_s=60.0)
    assert policy.delay(1, retryable(retry_after=86_400), rand=lambda: 0.0) == 60.0


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "answer"


async def test_retries_until_success_and_counts_attempts():
    waits: list[float] = []
    seen: list[tuple[str, float]] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    flaky = Flaky([retryable(), retryable(retry_after=3.0)])
    result, attempts = await call_with_retries(
        flaky, RetryPolicy(max_retries=4), sleep=sleep, rand=lambda: 1.0,
        on_retry=lambda error, wait: seen.append((str(error), wait)))
    assert (result, attempts) == ("answer", 3)
    assert waits == [0.5, 3.0]
    assert [wait for _, wait in seen] == waits


async def test_a_final_error_is_raised_at_once_with_its_own_type():
    async def sleep(seconds: float) -> None:
        raise AssertionError("must not wait")

    miss = CassetteMiss("no recorded answer", retryable=False)
    flaky = Flaky([miss])
    with pytest.raises(CassetteMiss) as caught:
        await call_with_retries(flaky, RetryPolicy(), sleep=sleep)
    assert caught.value is miss and flaky.calls == 1


async def test_other_exceptions_are_not_retried():
    flaky = Flaky([KeyError("bug")])
    with pytest.raises(KeyError):
        await call_with_retries(flaky, RetryPolicy(), sleep=lambda s: None)
    assert flaky.calls == 1


async def test_giving_up_says_how_many_attempts_and_keeps_the_cause():
    async def sleep(seconds: float) -> None:
        pass

    last = retryable(retry_after=2.0)
    flaky = Flaky([retryable(), retryable(), last])
    with pytest.raises(ProviderError) as caught:
        await call_with_retries(flaky, RetryPolicy(max_retries=2), sleep=sleep)
    assert str(caught.value) == "openai gpt-4o-mini: HTTP 503 (gave up after 3 attempts)"
    assert caught.value.__cause__ is last
    assert (caught.value.status, caught.value.retryable) == (503, True)
    assert flaky.calls == 3


async def test_zero_retries_means_one_attempt():
    async def sleep(seconds: float) -> None:
        raise AssertionError("must not wait")

    with pytest.raises(ProviderError, match="gave up after 1 attempt\\)"):
        await call_with_retries(Flaky([retryable()]), RetryPolicy(max_retries=0), sleep=sleep)


def test_retry_after_headers_in_every_form():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == pytest.approx(42)
    assert parse_retry_after(httpx.Headers({"retry-after": email.utils.formatdate(now - 5, usegmt=True)}),
                             now=now) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "12"})) == 12.0
    assert parse_retry_after(httpx.Headers({"retry-after": "12", "retry-after-ms": "1500"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None
