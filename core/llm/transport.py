"""What the HTTP providers share: connection pools, and turning HTTP failures into ProviderError.

Every provider makes one exchange per call and reports failure the same way: `retryable` says
whether trying again may help (timeouts, resets, 408/409/429/5xx, bodies that do not parse),
`retry_after` carries the server's hint. Messages name the provider, the model and the URL, and
never carry the API key.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import itertools
import json
import math
import time
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Any

import httpx

from core.errors import PipelineError, ProviderError

# httpcore's pool does work quadratic in its connections on every request it adds or removes
# (each idle connection recounts the idle ones): measured against the loopback server at 64 in
# flight, pools of 32 cost ~3 ms of CPU per request, pools of 4 ~0.75 ms, the floor of httpx
# itself. So concurrency is spread over many small pools, and a request goes to one with a free
# connection, never queueing inside a pool while another one idles.
MAX_POOL_CONNECTIONS = 4
RETRYABLE_STATUSES = frozenset({408, 409, 429})
_DETAIL_CHARS = 300


class ConnectionPools:
    """Several httpx clients of at most `pool_size` connections each, leased per request."""

    def __init__(self, *, concurrency: int, timeout_s: float, headers: dict[str, str],
                 pool_size: int | None = None) -> None:
        concurrency = max(1, concurrency)
        per_pool = min(concurrency, pool_size or MAX_POOL_CONNECTIONS)
        count = math.ceil(concurrency / per_pool)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
        headers = {"content-type": "application/json", **headers}
        # One TLS context for all pools: building one loads the CA bundle (tens of ms each).
        tls = httpx.create_ssl_context()
        self.clients = [httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers, verify=tls)
                        for _ in range(count)]
        # One token per connection, interleaved so that consecutive requests use different pools.
        self._free: collections.deque[int] = collections.deque(
            index for _ in range(per_pool) for index in range(count))
        self._overflow = itertools.cycle(range(count))

    @contextlib.contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """A client with a free connection; past capacity (callers without their own limit),
        the pools take turns and queue inside httpx."""
        if self._free:
            index = self._free.popleft()
            try:
                yield self.clients[index]
            finally:
                self._free.append(index)
        else:
            yield self.clients[next(self._overflow)]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class Exchange:
    """Posts one JSON body and returns the parsed JSON answer, or raises ProviderError."""

    def __init__(self, *, provider: str, pools: ConnectionPools, timeout_s: float,
                 secret: str | None) -> None:
        self.provider = provider
        self.pools = pools
        self.timeout_s = timeout_s
        self._secret = secret
        self._urls: dict[str, httpx.URL] = {}

    async def post_json(self, url: str, body: dict[str, Any], *, model: str) -> tuple[dict[str, Any], float]:
        """(parsed body, seconds the exchange took)."""
        where = f"{self.provider} {model}"
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        started = time.perf_counter()
        try:
            with self.pools.lease() as client:
                response = await client.post(self._parsed(url), content=content)
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{where}: no answer from {url} within {self.timeout_s:g}s "
                                f"({type(exc).__name__})", retryable=True) from exc
        except httpx.RequestError as exc:
            raise ProviderError(f"{where}: connection to {url} failed: "
                                f"{self.redact(str(exc)) or type(exc).__name__}", retryable=True) from exc
        latency = time.perf_counter() - started
        status = response.status_code
        if status >= 400:
            raise self._status_error(where, url, response)
        try:
            parsed = json.loads(response.content)
        except ValueError as exc:
            raise ProviderError(f"{where}: {url} answered with a body that is not JSON "
                                f"({len(response.content)} bytes)", retryable=True, status=status) from exc
        if not isinstance(parsed, dict):
            raise ProviderError(f"{where}: {url} answered with JSON that is not an object",
                                retryable=True, status=status)
        return parsed, latency

    def _parsed(self, url: str) -> httpx.URL:
        # Parsing the same URL for every request is a measurable share of httpx's per-call CPU.
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    def malformed(self, model: str, url: str, what: str) -> ProviderError:
        """An answer that parsed but lacks what a completion must have: worth another try."""
        return ProviderError(f"{self.provider} {model}: {url} answered without {what}",
                             retryable=True, status=200)

    def redact(self, text: str) -> str:
        # Real keys are long; masking a toy key of a few letters would only garble the message.
        if self._secret and len(self._secret) >= 8 and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def _status_error(self, where: str, url: str, response: httpx.Response) -> ProviderError:
        status = response.status_code
        detail = self.redact(api_error_message(response))
        retryable = status in RETRYABLE_STATUSES or status >= 500
        message = f"{where}: HTTP {status} from {url}"
        if detail:
            message += f": {detail}"
        return ProviderError(message, retryable=retryable, status=status,
                             retry_after=parse_retry_after(response.headers) if retryable else None)


def checked_base_url(url: str, provider: str) -> str:
    """The base URL without its trailing slash, or a PipelineError naming transform.base_url."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise PipelineError(f"{url!r} is not a URL ({exc})", key="transform.base_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PipelineError(f"{url!r}: {provider} needs an http:// or https:// URL",
                            key="transform.base_url")
    return url.rstrip("/")


def api_error_message(response: httpx.Response) -> str:
    """The API's own words about the failure (OpenAI and Anthropic both send error.message)."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message") or error.get("type")
        elif isinstance(error, str):
            message = error
        message = message or body.get("message") or body.get("detail")
    if message is None:
        message = text
    message = " ".join(str(message).split())
    return message if len(message) <= _DETAIL_CHARS else message[:_DETAIL_CHARS - 3] + "..."


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now if now is not None else datetime.now(timezone.utc).timestamp()
    return max(0.0, when.timestamp() - current)
