"""The one door to a model: what transform and the LLM judges call.

`LLMClient.complete(request)` answers from Loom's response cache when it can, otherwise makes the
call through the provider within its limits (concurrency, rate limits, budget) and with retries,
and returns the answer with its accounting (`LLMCall`: tokens, cost, latency, attempts). Every
provider gets the same caching, limits, retries, pricing and recording, because none of that
lives in the providers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from core.errors import BudgetExceeded, ProviderError, StoreError
from core.llm.answer_journal import AnswerJournal
from core.llm.base import LLMRequest, LLMResponse, Provider, ResponseCache, request_sent
from core.llm.breaker import CircuitBreaker, RunStopping
from core.llm.budget import DEFAULT_OUTPUT_CEILING, Budget
from core.llm.pricing import SOURCE_GATEWAY, Pricing, Quote, TokenUsage
from core.llm.ratelimit import LimitsRegistry, ProviderLimits
from core.llm.replay import CassetteRecorder
from core.llm.retry import RetryPolicy, call_with_retries
from core.llm.tokens import TokenCounter
from core.records import LLMCall


class LLMClient:
    """Caching, limits, budget, retries and accounting around one provider.

    - Cache: keyed by the request plus the provider's name and base URL. A hit makes no call
      and costs nothing. `use_cache=False` (`--no-cache`) skips reading but still stores fresh
      answers, so the next cached run sees them. Identical requests in flight at the same time
      share one call. Entries expire after `cache_ttl_s`.
    - Limits (`core.llm.ratelimit.ProviderLimits`, shared by every client of the same provider
      and base URL): requests in flight, adaptive (halved on 429, grown back on success);
      requests and tokens per minute; and the pause a Retry-After asks for, which holds every
      new request, not only the one that got it. Waits between retries happen outside the
      concurrency limit so a sleeping retry does not hold a slot.
    - Budget (`core.llm.budget.Budget`, shared by the run): each call reserves its worst case
      first and is refused with BudgetExceeded when it could pass the budget.
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
        max_throttle_wait_s: float = 600.0,
        concurrency: int = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        limits: ProviderLimits | None = None,
        registry: LimitsRegistry | None = None,
        budget: Budget | None = None,
        recorder: CassetteRecorder | None = None,
        on_warning: Callable[[str], None] | None = None,
        retry_policy: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        journal: AnswerJournal | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.provider = provider
        self.pricing = pricing
        self.recorder = recorder
        self.budget = budget
        # The run's answers, kept as they arrive (core.llm.answer_journal); shared by siblings.
        self.journal = journal
        # Shared by the run's clients: calls that keep failing the same way stop the run.
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        # Set when the run stops: no call waits out a rate limit or a backoff any longer.
        self.stopping = asyncio.Event()
        self._cache_store = cache  # as given, for sibling()
        self._concurrency = concurrency
        self._registry = registry
        self.warnings: list[str] = []
        # A provider that is already offline and free (replay) gains nothing from the cache.
        self._cache = cache if getattr(provider, "cacheable", True) else None
        self._read_cache = use_cache
        self._ttl_s = cache_ttl_s
        # retry_policy, when given, is used as is (its max_retries included).
        self._policy = retry_policy or RetryPolicy(max_retries=max_retries,
                                                   max_throttle_wait_s=max_throttle_wait_s)
        if limits is None:
            limits = registry.get(provider.name, provider.base_url, concurrency=concurrency,
                                  requests_per_minute=requests_per_minute,
                                  tokens_per_minute=tokens_per_minute, clock=clock,
                                  sleep=sleep) if registry is not None else ProviderLimits.build(
                concurrency, requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute, clock=clock, sleep=sleep)
        self.limits = limits
        self._on_warning = on_warning
        self._warned: set[str] = set()
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._inflight: dict[str, asyncio.Future[LLMResponse]] = {}
        self._tokens = TokenCounter()

    def stop(self) -> None:
        """The run is stopping: waits between attempts end now, and no attempt follows."""
        self.stopping.set()

    async def _wait(self, seconds: float) -> None:
        """Sleep between attempts, unless the run stops first."""
        if not self.stopping.is_set():
            try:
                async with asyncio.timeout(seconds):
                    await self.stopping.wait()
            except TimeoutError:
                return
        raise RunStopping("not retried: the run is stopping", retryable=False)

    def sibling(self, provider: Provider) -> "LLMClient":
        """A client for another provider with this one's cache, pricing, retry policy,
        concurrency, budget, recorder and warnings: what an LLM judge with a model of its own
        uses. It takes its limits from this client's registry, so clients of one endpoint share
        them; the run's budget is the same object, so judges and transform spend one budget."""
        client = LLMClient(provider, pricing=self.pricing, cache=self._cache_store,
                         use_cache=self._read_cache, cache_ttl_s=self._ttl_s,
                         concurrency=self._concurrency, registry=self._registry,
                         budget=self.budget, recorder=self.recorder,
                         on_warning=self._on_warning, retry_policy=self._policy,
                         breaker=self.breaker, journal=self.journal, sleep=self._sleep,
                         clock=self._clock, rand=self._rand)
        client.stopping = self.stopping  # one stop for the run's clients
        return client

    async def complete(self, request: LLMRequest) -> tuple[LLMResponse, LLMCall]:
        journal = self.journal if getattr(self.provider, "cacheable", True) else None
        key: str | None = None
        if journal is not None:
            key = request.key(self.provider.name, self.provider.base_url)
            kept = journal.take(key)
            if kept is not None:
                # Paid for by the attempt that was killed before it checkpointed it: the run
                # counts it (and its budget spends it) once, here.
                if self.budget is not None and kept.call.cost_usd:
                    self.budget.spent += kept.call.cost_usd
                return kept.response, dataclasses.replace(kept.call, replayed=True)
            if self._read_cache and self._cache is not None:
                shared = journal.shared(key)
                if shared is not None:
                    # Another record's answer to this request, paid once by the killed
                    # attempt: a cache hit, as it would have been had the run not died.
                    return shared.response, self._cached_call(request, shared.response, 0.0)
        if self._cache is None:
            return await self._call(request, key)
        started = self._clock()
        key = key or request.key(self.provider.name, self.provider.base_url)
        if self._read_cache:
            hit = await self._lookup(key)
            if hit is not None:
                return hit, self._cached_call(request, hit, self._clock() - started)
            pending = self._inflight.get(key)
            if pending is not None:
                task = asyncio.current_task()
                cancels = task.cancelling() if task is not None else 0
                try:
                    response = await asyncio.shield(pending)
                except asyncio.CancelledError:
                    # Make our own call only when the shared call alone was cancelled: when
                    # this caller was cancelled too (a run stopping cancels every worker at
                    # once), the cancel is ours and must go on.
                    if not pending.cancelled() or (task is not None and task.cancelling() > cancels):
                        raise
                else:
                    return response, self._cached_call(request, response, self._clock() - started)
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
        # An open breaker makes no call; one whose stage has calls retrying after the endpoint
        # failed them waits for those first (core.llm.breaker).
        await self.breaker.admit(request.stage)
        limits = self.limits
        stats = limits.stats
        budget = self.budget
        model = request.model
        where = {"provider": self.provider.name, "base_url": self.provider.base_url}
        counted = self._tokens.count(request.messages, model, self.provider.name)
        estimate_out = request.max_tokens if request.max_tokens is not None \
            else DEFAULT_OUTPUT_CEILING
        # Refused here, before any wait: a call the budget cannot afford is never sent.
        first = False
        if budget is not None:
            budget.check(model, counted.tokens, estimate_out, **where)
            first = await budget.first_call(model, **where)
        started = self._clock()
        queued = 0.0  # time spent waiting for our own limits: not the model's latency
        priced: Priced | None = None

        def corrected() -> int:
            if budget is None:
                return counted.tokens + estimate_out
            tokens_in, tokens_out = budget.calibration.correct(model, counted.tokens, estimate_out)
            return tokens_in + tokens_out

        journal = self.journal if key is not None else None
        sent: str | None = None  # the journal's id of the attempt being made, once it is sent

        def mark_sent(reserved: float) -> None:
            # Journaled as the request starts going out on an open connection (the transport
            # calls this), not before: a call still connecting at a crash was never made.
            nonlocal sent
            if sent is None and journal is not None and key is not None:
                sent = journal.sent(key, reserved)

        async def attempt() -> LLMResponse:
            nonlocal queued, priced, sent
            before = self._clock()
            pause = self._hold(limits.resume_at - before, limits.waiting_for)
            if pause > 0:
                await (self._wait(pause) if self._sleep is asyncio.sleep else self._sleep(pause))
                stats.paused_s += pause
            estimate = corrected()
            if limits.requests is not None:
                stats.rate_wait_s += await limits.requests.take(1)
            if limits.tokens is not None:
                stats.rate_wait_s += await limits.tokens.take(estimate)
            concurrency = limits.concurrency
            ticket = await concurrency.acquire()
            # A limit used up (or a Retry-After) while this call waited for its slot holds it
            # too: the pause is read again once the slot is ours.
            try:
                pause = self._hold(limits.resume_at - self._clock(), limits.waiting_for)
            except ProviderError:
                concurrency.release()
                raise
            if pause > 0:
                try:
                    await (self._wait(pause) if self._sleep is asyncio.sleep else self._sleep(pause))
                except BaseException:
                    concurrency.release()
                    raise
                stats.paused_s += pause
            queued += self._clock() - before
            reserved = 0.0
            cost: float | None = None
            try:
                # Admitted now, holding a slot, against every call that has settled so far:
                # only the calls in flight are admitted on estimates.
                if budget is not None:
                    reserved = budget.reserve(model, counted.tokens, estimate_out, **where)
                sending = None
                if journal is not None:
                    sending = request_sent.set(functools.partial(mark_sent, reserved))
                try:
                    response = await self.provider.complete(request)
                except ProviderError as error:
                    if sent is not None and journal is not None:  # (sent implies journal)
                        journal.ended(sent)  # nothing answered: not a call to count as repeated
                        sent = None
                    if error.status == 429:
                        stats.throttled += 1
                        concurrency.throttled(ticket)
                    if limits.tokens is not None:
                        limits.tokens.adjust(estimate)  # a failed call used none of its tokens
                    raise
                finally:
                    if sending is not None:
                        request_sent.reset(sending)
                priced = self._price(request, response)
                cost = priced.cost
                if budget is not None:
                    budget.calibration.learn(model, counted.tokens, response.input_tokens,
                                             response.output_tokens)
            except BudgetExceeded:
                if limits.tokens is not None:
                    limits.tokens.adjust(estimate)  # never sent
                raise
            finally:
                # Settled before the slot is freed: the call it lets in sees the real spend.
                if budget is not None:
                    budget.settle(reserved, cost)
                concurrency.release()
            concurrency.succeeded()
            if response.limit_reset_s:
                # A limit is used up: hold new requests until it resets, rather than earn a 429.
                limits.resume_at = max(limits.resume_at, self._clock() + min(
                    response.limit_reset_s, self._policy.max_retry_after_s))
                limits.waiting_for = "rate limit used up"
            if limits.tokens is not None:
                limits.tokens.adjust(estimate - response.input_tokens - response.output_tokens)
            return response

        unsettled = False

        def on_retry(error: ProviderError, wait: float) -> None:
            nonlocal unsettled
            stats.retries += 1
            if not unsettled and self.breaker.suspects(error):
                unsettled = True
                self.breaker.unsettle(request.stage)
            if error.retry_after:
                hint = min(error.retry_after, self._policy.max_retry_after_s)
                limits.resume_at = max(limits.resume_at, self._clock() + hint)
                limits.waiting_for = f"HTTP {error.status}: retry after {hint:.0f} s"

        try:
            try:
                response, attempts = await call_with_retries(
                    attempt, self._policy, rand=self._rand, on_retry=on_retry,
                    sleep=self._wait if self._sleep is asyncio.sleep else self._sleep)
            except ProviderError as error:
                self.breaker.failed(error, request.stage)
                raise
            self.breaker.succeeded(request.stage)
        finally:
            if unsettled:
                self.breaker.settle(request.stage)
            if first and budget is not None:
                budget.first_call_ended(model)
        assert priced is not None
        cost = priced.cost
        call = LLMCall(
            stage=request.stage, provider=self.provider.name, model=request.model,
            input_tokens=response.input_tokens, output_tokens=response.output_tokens,
            cached_tokens=response.cached_tokens, cost_usd=cost,
            latency_s=max(0.0, self._clock() - started - queued), attempts=attempts,
            list_input_tokens=response.input_tokens, list_output_tokens=response.output_tokens,
            list_cost_usd=cost, cache_write_tokens=response.cache_write_tokens,
            cache_write_1h_tokens=response.cache_write_1h_tokens,
            reasoning_tokens=response.reasoning_tokens, cost_source=priced.source,
            reported_cost_usd=response.reported_cost_usd, prompt_cache_saved_usd=priced.saved,
        )
        if journal is not None and key is not None:
            # Kept before anything else happens to the answer: from here a crash does not
            # make the run pay for it again. (A provider that is not HTTP never says it sent.)
            journal.answered(sent, key, response, call)
        if self.recorder is not None:
            self.recorder.record(request, response)
        if key is not None and self._cache is not None:
            await self._store(key, request, response)
        return response, call

    def _hold(self, pause: float, why: str | None) -> float:
        """The pause a server's limit asks of every call, or a refusal when it is longer than a
        call may wait in all (transform.rate_limit.max_wait_s): the record is skipped, for
        --resume, rather than waiting minutes to be sent into a limit still used up."""
        if pause > self._policy.max_throttle_wait_s:
            raise ProviderError(
                f"rate limited: {why or 'the limit'} holds calls for {pause:.0f} s more, past "
                f"transform.rate_limit.max_wait_s ({self._policy.max_throttle_wait_s:g} s)",
                retryable=False, status=429)
        return pause

    def _cached_call(self, request: LLMRequest, response: LLMResponse, latency: float) -> LLMCall:
        # No call was made: no tokens were spent and nothing is billed. What the answer cost
        # when it was made is kept apart, for projections.
        return LLMCall(stage=request.stage, provider=self.provider.name, model=request.model,
                       cost_usd=0.0, latency_s=max(0.0, latency), cached=True, attempts=0,
                       list_input_tokens=response.input_tokens,
                       list_output_tokens=response.output_tokens,
                       list_cost_usd=self._list_price(request, response))

    def _quote(self, request: LLMRequest, response: LLMResponse) -> Quote | None:
        where = {"provider": self.provider.name, "base_url": self.provider.base_url}
        quote = self.pricing.quote(request.model, **where)
        if quote is None and response.model and response.model != request.model:
            # A deployment alias (Azure, a proxy) that reports the real model it ran.
            quote = self.pricing.quote(response.model, **where)
        if quote is None and response.reported_cost_usd is not None:
            # An endpoint that bills the call (a LiteLLM proxy) fronts the vendor: its model is
            # the vendor's, priced by name, and the gateway's figure stays beside ours. A local
            # server sends no cost, so its "gpt-4o-mini" is never billed at OpenAI's price.
            quote = self.pricing.quote(request.model) or (
                self.pricing.quote(response.model) if response.model else None)
        return quote

    def _list_price(self, request: LLMRequest, response: LLMResponse) -> float | None:
        return self._price(request, response, warn=False).cost

    def _price(self, request: LLMRequest, response: LLMResponse, *,
               warn: bool = True) -> "Priced":
        """What the call cost and where that figure came from: our price for the model (an
        override, else the genai-prices data), else the gateway's reported cost, else None.
        With both, ours is used and the gateway's is kept beside it (LLMCall.reported_cost_usd)."""
        quote = self._quote(request, response)
        reported = response.reported_cost_usd
        if quote is not None:
            usage = TokenUsage(response.input_tokens, response.output_tokens,
                               response.cached_tokens, response.cache_write_tokens,
                               response.cache_write_1h_tokens)
            context = _price_context(response)
            return Priced(quote.cost(usage, context=context), quote.source,
                          quote.saving(usage, context=context))
        if reported is not None:
            if warn:
                self._warn_once(f"gateway-cost:{request.model}",
                                f"no price known for model {request.model}: its cost is the one "
                                f"the gateway reported (price it under pricing: in "
                                f"~/.loom/config.yaml or transform.price to use your own)")
            return Priced(reported, SOURCE_GATEWAY, None)
        if warn:
            self._warn_once(f"price:{request.model}",
                            f"no price known for model {request.model} on "
                            f"{self.provider.name}: its cost is not counted (price it under "
                            f"pricing: in ~/.loom/config.yaml or with transform.price)")
        return Priced(None, None, None)

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
            await self._cache.cache_put(key, value, provider=self.provider.name, model=request.model,
                                        ttl_s=self._ttl_s)
        except StoreError:
            # The history store itself cannot be written (a full disk, a file size limit): the
            # run's next checkpoint fails with this error and says it once, as the run's error.
            return
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


class Priced:
    """A call's cost, where it came from (core.llm.pricing SOURCE_*), and what prompt caching
    saved (None when unknown)."""

    __slots__ = ("cost", "source", "saved")

    def __init__(self, cost: float | None, source: str | None, saved: float | None) -> None:
        self.cost = cost
        self.source = source
        self.saved = saved


def _price_context(response: LLMResponse) -> dict[str, str] | None:
    """How the response says it was served, for the price data's variants (OpenAI reports the
    `service_tier` that billed the call: default, flex, priority)."""
    raw = response.raw
    tier = raw.get("service_tier") if isinstance(raw, dict) else None
    return {"service_tier": tier} if isinstance(tier, str) and tier else None
