"""The circuit breaker: a run whose calls keep failing the same way stops.

Every call of a run (transform and judges) reports to one breaker. It opens when
- `failures` calls in a row fail with the same fatal class (auth, billing, unknown model,
  unsupported parameter, unreachable: `core.llm.failures`), or with the same passing failure
  (a 5xx, a 4xx) once their retries are spent, or
- a credential is refused at all (401/403: no later call will have a better key).
A success closes the count. Once open, every call fails at once with `CircuitOpen`, without
touching the network: the run stops, the records not processed are skipped and resumable.

While a call of a stage is between attempts after a failure that speaks of the endpoint (a 5xx,
a timeout; not a 429, not the record's own 4xx), new calls of that stage wait for it to settle
before their first attempt. Without that, a call's backoff frees its slot for the next record,
whose first attempt fails as fast: the requests a broken endpoint received before the breaker
opened grew with how long the backoffs were, not with `failures`. With it, at most
max(failures, concurrency) calls are tried, each with its retries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from core.errors import ProviderError
from core.llm.failures import FailureClass, classify, same_failure, signature

DEFAULT_FAILURES = 3


class RunStopping(ProviderError):
    """A wait between attempts ended because the run is stopping: says nothing of the endpoint."""


class CircuitOpen(ProviderError):
    """The breaker is open: the call was not made."""

    def __init__(self, trip: "Trip") -> None:
        super().__init__(trip.message, retryable=False, status=trip.status)
        self.trip = trip


@dataclass(frozen=True, slots=True)
class Trip:
    failure: FailureClass
    status: int | None
    cause: str  # the last failure's message
    calls: int  # how many calls failed this way in a row

    @property
    def message(self) -> str:
        fix = f"; {self.failure.fix}" if self.failure.fix else ""
        return (f"stopped after {self.calls} call{'s' if self.calls != 1 else ''} failed the same "
                f"way ({self.failure.value}): {self.cause}{fix}")


class CircuitBreaker:
    def __init__(self, failures: int = DEFAULT_FAILURES) -> None:
        self.failures = max(1, failures)
        self.trip: Trip | None = None
        # One streak per stage: a judge whose endpoint fails every call trips the breaker
        # though the transform's calls between them succeed.
        self._streaks: dict[str, tuple[tuple[FailureClass, str], int]] = {}
        self.successes = 0  # calls the endpoints answered: a later 4xx is a record's own
        self._unsettled: dict[str, int] = {}  # calls retrying after the endpoint failed them
        self._settled: dict[str, asyncio.Event] = {}
        # Records refused with a 4xx that is the record's own or the endpoint's, wait for the
        # next call of their stage to tell: a success (or another failure) says the record's,
        # the breaker opening on that 4xx says the endpoint's (core.processing).
        self._parked: dict[str, list[asyncio.Future[bool]]] = {}

    def check(self) -> None:
        """Raise CircuitOpen when the breaker is open."""
        if self.trip is not None:
            raise CircuitOpen(self.trip)

    async def admit(self, stage: str = "transform") -> None:
        """Before a call's first attempt: wait while calls of its stage are retrying after the
        endpoint failed them, then raise CircuitOpen if they opened the breaker."""
        while self.trip is None and self._unsettled.get(stage):
            await self._settled.setdefault(stage, asyncio.Event()).wait()
        self.check()

    def suspects(self, error: ProviderError) -> bool:
        """Whether a failed attempt speaks of the endpoint (so new calls should wait for its
        retry) rather than of the record or of a rate limit."""
        if isinstance(error, (CircuitOpen, RunStopping)):
            return False
        return classify(error) not in (FailureClass.RECORD, FailureClass.THROTTLED)

    def unsettle(self, stage: str = "transform") -> None:
        """A call of `stage` failed an attempt that suspects the endpoint and will retry."""
        self._unsettled[stage] = self._unsettled.get(stage, 0) + 1

    def settle(self, stage: str = "transform") -> None:
        """A call counted by `unsettle` ended (answered, failed for good or cancelled)."""
        left = self._unsettled.get(stage, 0) - 1
        if left > 0:
            self._unsettled[stage] = left
            return
        self._unsettled.pop(stage, None)
        event = self._settled.pop(stage, None)
        if event is not None:
            event.set()  # every waiter looks again; a later wait makes a new event

    def succeeded(self, stage: str = "transform") -> None:
        self._streaks.pop(stage, None)
        self.successes += 1
        self._decide(stage, True)

    def park(self, error: ProviderError) -> "asyncio.Future[bool] | None":
        """For a call that failed with an ambiguous 4xx (FailureClass.REQUEST): a future that
        is True once the failure proves the record's own, False when it opened the breaker."""
        stage = getattr(error, "breaker_stage", None)
        if stage is None or self.trip is not None:
            return None
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._parked.setdefault(stage, []).append(future)
        return future

    def decide_all(self) -> None:
        """No call is left to tell (the input is done): the parked failures are the records'."""
        for stage in list(self._parked):
            self._decide(stage, True)

    def _decide(self, stage: str, records_own: bool) -> None:
        for future in self._parked.pop(stage, []):
            if not future.done():
                future.set_result(records_own)

    def failed(self, error: ProviderError, stage: str = "transform") -> FailureClass:
        """Count a call that failed for good; returns its class."""
        if isinstance(error, CircuitOpen):
            return error.trip.failure
        if isinstance(error, RunStopping):
            return FailureClass.SERVER
        failure = classify(error)
        if failure in (FailureClass.RECORD, FailureClass.THROTTLED):
            return failure  # the record's own, or a wait: says nothing about the endpoint
        key = (failure, failure.value if failure.fatal else signature(error))
        streak, count = self._streaks.get(stage, (None, 0))
        same = streak is not None and streak[0] == key[0] and same_failure(streak[1], key[1])
        count = count + 1 if same else 1
        if not same:
            self._decide(stage, True)  # another failure: the parked ones were the records'
        self._streaks[stage] = (key, count)
        if failure is FailureClass.REQUEST:
            error.breaker_stage = stage  # type: ignore[attr-defined]  # for park()
        if self.trip is None and (count >= self.failures or failure is FailureClass.AUTH):
            self.trip = Trip(failure, error.status, error.message, count)
            for event in self._settled.values():
                event.set()  # calls waiting to be admitted now fail at once
            for parked in list(self._parked):
                self._decide(parked, False)
        return failure
