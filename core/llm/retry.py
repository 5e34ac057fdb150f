"""Trying a failed LLM call again: exponential backoff with full jitter, server hints first.

Only a ProviderError that says `retryable` is tried again; anything else surfaces at once with
its own type. After the last attempt the error says how many were made and keeps the last
failure as its cause.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from core.errors import ProviderError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 4  # attempts after the first, for failures other than rate limits
    base_s: float = 0.5
    cap_s: float = 20.0
    # Rate limits (429) are waited out rather than counted: a call may wait this long in all
    # for them (transform.rate_limit.max_wait_s) before it gives up.
    max_throttle_wait_s: float = 600.0
    # A server may ask for a long pause; past this the hint is trimmed rather than obeyed blindly.
    max_retry_after_s: float = 900.0

    def delay(self, retry: int, error: ProviderError, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        # Full jitter: a uniformly random wait below the exponential ceiling, so many workers
        # that failed together do not come back together.
        ceiling: float = min(self.cap_s, self.base_s * (2 ** (retry - 1)))
        wait = rand() * ceiling
        if error.retry_after is not None:
            wait = max(wait, min(error.retry_after, self.max_retry_after_s))
        return wait


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Sleep = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[ProviderError, float], None] | None = None,
) -> tuple[T, int]:
    """(result, attempts made). `on_retry(error, wait)` runs before each wait."""
    attempts = failures = 0
    throttled_s = 0.0
    while True:
        attempts += 1
        try:
            return await attempt(), attempts
        except ProviderError as error:
            if not error.retryable:
                raise
            throttled = error.status == 429
            if throttled:
                wait = policy.delay(min(attempts, 8), error, rand)
                if throttled_s + wait > policy.max_throttle_wait_s:
                    raise ProviderError(
                        f"{error.message} (rate limited: waited {throttled_s:.0f} s over "
                        f"{attempts} attempts, the limit is {policy.max_throttle_wait_s:g} s: "
                        f"transform.rate_limit.max_wait_s)",
                        retryable=True, status=error.status, retry_after=error.retry_after,
                        code=error.code) from error
                throttled_s += wait
            else:
                failures += 1
                if failures > policy.max_retries:
                    raise ProviderError(
                        f"{error.message} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})",
                        retryable=True, status=error.status, retry_after=error.retry_after,
                        param=error.param, code=error.code,
                    ) from error
                # A down endpoint may ask for an hour (503 with Retry-After: 3600): its hint is
                # honoured within the time a call may wait in all, as for rate limits, so a run
                # that cannot work fails in minutes, not in max_retries hours.
                wait = min(policy.delay(failures, error, rand),
                           max(0.0, policy.max_throttle_wait_s - throttled_s))
                throttled_s += wait
            if on_retry is not None:
                on_retry(error, wait)
            await sleep(wait)
