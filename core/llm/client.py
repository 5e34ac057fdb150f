"""The one door to a model: what transform and the LLM judges call.

`LLMClient.complete(request)` answers from Loom's response cache when it can, otherwise makes the
call through the provider with bounded concurrency and retries, and returns the answer with its
accounting (`LLMCall`: tokens, cost, latency, attempts). Every provider gets the same caching,
retries, pricing and recording, because none of that lives in the providers.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from core.errors import ProviderError
from core.llm.base import LLMRequest, LLMResponse, Provider, ResponseCache
from core.llm.pricing import Pricing
from core.llm.replay import CassetteRecorder
from core.llm.retry import RetryPolicy, call_with_retries
from core.records import LLMCall


class LLMClient:
    """Caching, concurrency, retries and accounting around one provider.

    - Cache: keyed by the request plus the provider's name and base URL. A hit makes no call
      and costs nothing. `use_cache=False` (`--no-cache`) skips reading but still stores fresh
      answers, so the next cached run sees them. Identical requests in flight at the same time
      share one call.
    - Concurrency: at most `concurrency` exchanges in flight; waits between retries happen
      outside that limit so a sleeping retry does not hold a slot.
    - Retry-After: a server's hint pauses every new request of this client, not only the one
      that got it: the whole pipeline slows down instead of hammering a rate limit.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        pricing: Pricing,
        cache: ResponseCache | None = None,
        use_cache: bool = True,
        cache_ttl_s: float | None = None,
        max_retries: int = 4,
        concurrency: int = 8,
        recorder: CassetteRecorder | None = None,
        on_warning: Callable[[str], None] | None = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.provider = provider
        self.pricing = pricing
        self.recorder = recorder
        self._cache_store = cache  # as given, for sibling()
        self._concurrency = concurrency
        self.warnings: list[str] = []
        # A provider that is already offline and free (replay) gains nothing from the cache.
        self._cache = cache if getattr(provider, "cacheable", True) else None
        self._read_cache = use_cache
        self._ttl_s = cache_ttl_s
        # retry_policy, when given, is used as is (its max_retries included).
        self._policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._on_warning = on_warning
        self._warned: set[str] = set()
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._resume_at = 0.0  # on self._clock: no new exchange starts before this
        self._inflight: dict[str, asyncio.Future[LLMResponse]] = {}

    def sibling(self, provider: Provider) -> "LLMClient":
        """A client for another provider with this one's cache, pricing, retry policy,
        concurrency, recorder and warnings: what an LLM judge with a model of its own uses."""
        return LLMClient(provider, pricing=self.pricing, cache=self._cache_store,
                         use_cache=self._read_cache, cache_ttl_s=self._ttl_s,
                         concurrency=self._concurrency, recorder=self.recorder,
                         on_warning=self._on_warning, retry_policy=self._policy,
                         sleep=self._sleep, clock=self._clock, rand=self._rand)

    async def complete(self, request: LLMRequest) -> tuple[LLMResponse, LLMCall]:
        if self._cache is None:
            return await self._call(request, None)
        started = self._clock()
        key = request.key(self.provider.name, self.provider.base_url)
        if self._read_cache:
            hit = await self._lookup(key)
            if hit is not None:
                return hit, self._cached_call(request, self._clock() - started)
            pending = self._inflight.get(key)
            if pending is not None:
                try:
                    response = await asyncio.shield(pending)
                except asyncio.CancelledError:
                    if not pending.cancelled():
                        raise  # this caller was cancelled, not the shared call
                else:
                    return response, self._cached_call(request, self._clock() - started)
            return await self._lead(request, key)
        return await self._call(request, key)

    async def _lead(self, request: LLMRequest, key: str) -> tuple[LLMResponse, LLMCall]:
        """Make the call that identical concurrent requests wait for."""
        shared: asyncio.Future[LLMResponse] = asyncio.get_running_loop().create_future()
        self._inflight[key] = shared
        try:
            response, call = await self._call(request, key)
        except asyncio.CancelledError:
            shared.cancel()  # waiters make their own call
            raise
        except BaseException as exc:
            shared.set_exception(exc)
            shared.exception()  # retrieved: no "never retrieved" noise when nobody waited
            raise
        else:
            shared.set_result(response)
            return response, call
        finally:
            self._inflight.pop(key, None)

    async def _call(self, request: LLMRequest, key: str | None) -> tuple[LLMResponse, LLMCall]:
        started = self._clock()
        queued = 0.0  # time spent waiting for our own concurrency limit: not the model's latency

        async def attempt() -> LLMResponse:
            nonlocal queued
            pause = self._resume_at - self._clock()
            if pause > 0:
                await self._sleep(pause)
            before = self._clock()
            async with self._slots:
                queued += self._clock() - before
                return await self.provider.complete(request)

        def on_retry(error: ProviderError, wait: float) -> None:
            if error.retry_after:
                hint = min(error.retry_after, self._policy.max_retry_after_s)
                self._resume_at = max(self._resume_at, self._clock() + hint)

        response, attempts = await call_with_retries(attempt, self._policy, sleep=self._sleep,
                                                     rand=self._rand, on_retry=on_retry)
        call = LLMCall(
            stage=request.stage, provider=self.provider.name, model=request.model,
            input_tokens=response.input_tokens, output_tokens=response.output_tokens,
            cached_tokens=response.cached_tokens, cost_usd=self._price(request, response),
            latency_s=max(0.0, self._clock() - started - queued), attempts=attempts,
        )
        if self.recorder is not None:
            self.recorder.record(request, response)
        if key is not None and self._cache is not None:
            await self._store(key, request, response)
        return response, call

    def _cached_call(self, request: LLMRequest, latency: float) -> LLMCall:
        # No call was made: no tokens were spent and nothing is billed.
        return LLMCall(stage=request.stage, provider=self.provider.name, model=request.model,
                       cost_usd=0.0, latency_s=max(0.0, latency), cached=True, attempts=0)

    def _price(self, request: LLMRequest, response: LLMResponse) -> float | None:
        cost = self.pricing.cost(request.model, response.input_tokens, response.output_tokens,
                                 response.cached_tokens)
        if cost is None and response.model and response.model != request.model:
            # A deployment alias (Azure, a proxy) that reports the real model it ran.
            cost = self.pricing.cost(response.model, response.input_tokens,
                                     response.output_tokens, response.cached_tokens)
        if cost is None:
            self._warn_once(f"price:{request.model}",
                            f"no price known for model {request.model}: its cost is not counted "
                            f"(add it under pricing: in ~/.loom/config.yaml)")
        return cost

    # The cache only saves money: when the store cannot serve it, say so once and call the model.
    async def _lookup(self, key: str) -> LLMResponse | None:
        assert self._cache is not None
        try:
            value = await self._cache.cache_get(key)
        except Exception as exc:  # noqa: BLE001 - any store failure degrades to a cache miss
            self._warn_once("cache:get", f"response cache unavailable ({type(exc).__name__}: {exc}); "
                                         f"calling the provider instead")
            return None
        if not value:
            return None
        if self._ttl_s is not None:
            cached_at = value.get("cached_at")
            if not isinstance(cached_at, (int, float)) or time.time() - cached_at > self._ttl_s:
                return None
        try:
            return LLMResponse.from_dict(value)
        except (KeyError, TypeError, ValueError):
            return None  # an entry from an older layout: fetch a fresh one

    async def _store(self, key: str, request: LLMRequest, response: LLMResponse) -> None:
        assert self._cache is not None
        value = response.to_dict()
        value["cached_at"] = time.time()
        try:
            await self._cache.cache_put(key, value, provider=self.provider.name, model=request.model)
        except Exception as exc:  # noqa: BLE001 - the answer is good even if keeping it failed
            self._warn_once("cache:put", f"response cache not written ({type(exc).__name__}: {exc})")

    def _warn_once(self, topic: str, message: str) -> None:
        if topic in self._warned:
            return
        self._warned.add(topic)
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)

    async def aclose(self) -> None:
        await self.provider.aclose()

    async def __aenter__(self) -> "LLMClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
