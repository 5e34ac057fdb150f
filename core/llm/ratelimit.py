"""How fast Loom may call one provider: requests in flight, requests and tokens per minute.

- `AdaptiveLimit` bounds the requests in flight. It starts at the pipeline's `concurrency`,
  halves when the provider answers 429 and grows back by one after a full window of successes
  (additive increase, multiplicative decrease — what TCP does with a congested link), so a run
  settles just under the provider's real limit instead of hammering it.
- `TokenBucket` spreads `requests_per_minute` and `tokens_per_minute` over the minute. A call's
  tokens are estimated before it is sent (prompt characters / 4 + max_tokens) and corrected
  with the real usage when it returns.
- `ProviderLimits` holds both for one provider and base URL, with the pause a Retry-After asks
  for, so every client of that provider (the transform and the LLM judges) slows down together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]

# A bucket holds this many seconds of its rate: a run may start with a short burst, but never
# with a whole minute's worth at once (providers enforce per-minute limits over shorter windows).
BURST_S = 6.0


class TokenBucket:
    """`per_minute` units a minute, refilled continuously, holding at most BURST_S seconds' worth.

    A request bigger than the bucket waits for a full bucket and then takes it into debt, so
    that oversized calls are slowed, never refused.
    """

    def __init__(self, per_minute: float, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # per second
        self.capacity = max(1.0, self.rate * BURST_S)
        self.level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._turn = asyncio.Lock()  # waiters are served in arrival order

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` can be taken."""
        self._refill()
        needed = min(amount, self.capacity)
        # The tolerance absorbs float rounding: a deficit of 1e-12 tokens is not worth a sleep
        # (and a clock at large values may not move for it at all).
        return 0.0 if self.level >= needed - 1e-6 else (needed - self.level) / self.rate

    async def take(self, amount: float) -> float:
        """Take `amount`, waiting for it; returns the seconds waited."""
        waited = 0.0
        if not self._turn.locked() and self.wait_s(amount) == 0.0:
            self.level -= amount
            return 0.0
        async with self._turn:
            while (delay := self.wait_s(amount)) > 0:
                await self._sleep(delay)
                waited += delay
            self.level -= amount
        return waited

    def adjust(self, amount: float) -> None:
        """Put back (positive) or charge more (negative) once a call's real size is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class AdaptiveLimit:
    """At most `limit` holders at once; the limit moves between `minimum` and `maximum`."""

    def __init__(self, maximum: int, *, minimum: int = 1) -> None:
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.limit = self.maximum
        self.lowest = self.maximum
        self.in_flight = 0
        self.cuts = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._successes = 0
        self._issued = 0  # tickets handed out, so a cut is not repeated for requests sent before it
        self._cut_after = 0

    async def acquire(self) -> int:
        """Wait for a slot; returns a ticket to pass to `throttled`."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter  # `release` counts us in before waking us
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.release()  # woken and cancelled at once: give the slot back
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
        self._issued += 1
        return self._issued

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def succeeded(self) -> None:
        """One success; after a full window of them, one more slot."""
        if self.limit >= self.maximum:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            self._wake()

    def throttled(self, ticket: int) -> bool:
        """A 429: halve the limit, once per window (a request sent before the last cut does not
        cut again). Returns whether it cut."""
        if ticket <= self._cut_after:
            return False
        self._cut_after = self._issued
        self._successes = 0
        new = max(self.minimum, self.limit // 2)
        if new == self.limit:
            return False
        self.limit = new
        self.lowest = min(self.lowest, new)
        self.cuts += 1
        return True


@dataclass
class LimitStats:
    """What the limits did during a run, for the run's record."""

    throttled: int = 0  # 429 answers
    retries: int = 0  # attempts after the first, for any reason
    rate_wait_s: float = 0.0  # time spent waiting for the token buckets
    paused_s: float = 0.0  # time new requests were held by a Retry-After


@dataclass
class ProviderLimits:
    """The limits one provider (name and base URL) is called under, shared by its clients."""

    concurrency: AdaptiveLimit
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    resume_at: float = 0.0  # on the clients' clock: no new request starts before this
    waiting_for: str | None = None  # why resume_at was set, for the progress line
    stats: LimitStats = field(default_factory=LimitStats)

    @classmethod
    def build(cls, concurrency: int, *, requests_per_minute: float | None = None,
              tokens_per_minute: float | None = None, clock: Clock = time.monotonic,
              sleep: Sleep = asyncio.sleep) -> "ProviderLimits":
        return cls(
            concurrency=AdaptiveLimit(concurrency),
            requests=TokenBucket(requests_per_minute, clock=clock, sleep=sleep)
            if requests_per_minute else None,
            tokens=TokenBucket(tokens_per_minute, clock=clock, sleep=sleep)
            if tokens_per_minute else None,
        )


class LimitsRegistry:
    """One `ProviderLimits` per provider and base URL within a run: the transform and any LLM
    judge calling the same endpoint share its concurrency, rate limits and Retry-After pauses.
    The first caller's settings decide."""

    def __init__(self) -> None:
        self._limits: dict[tuple[str, str | None], ProviderLimits] = {}

    def get(self, provider: str, base_url: str | None, *, concurrency: int,
            requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
            clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> ProviderLimits:
        key = (provider, base_url)
        limits = self._limits.get(key)
        if limits is None:
            limits = self._limits[key] = ProviderLimits.build(
                concurrency, requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute, clock=clock, sleep=sleep)
        return limits

    def all(self) -> list[ProviderLimits]:
        return list(self._limits.values())
