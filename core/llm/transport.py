"""What the HTTP providers share: connection pools, and turning HTTP failures into ProviderError.

Every provider makes one exchange per call and reports failure the same way: `retryable` says
whether trying again may help (timeouts, resets, 408/409/429/5xx, bodies that do not parse),
`retry_after` carries the server's hint. Messages name the provider, the model and the URL, and
never carry the API key.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import itertools
import json
import math
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

import httpx

from core.errors import PipelineError, ProviderError
from core.llm.base import request_sent
from core.llm.http11 import MAX_RESPONSE_BYTES, Http11Transport, ResponseTooLarge
from core.secrets_mask import SecretMasker

# Connections per pool. httpcore's pool (httpx's default transport) does work quadratic in its
# connections on every request it adds or removes: measured against the loopback server at 64 in
# flight, pools of 32 cost ~3 ms of CPU per request, pools of 4 ~0.75 ms. Loom's own HTTP/1.1
# transport (core.llm.http11) keeps a plain list of idle connections, so its cost does not grow
# with the pool (0.31 ms per request with 32 per pool, 0.32 ms with 4), and it gets pools of 32;
# httpx's transport, used when a proxy is configured, keeps pools of 4.
MAX_POOL_CONNECTIONS = 32
MAX_HTTPX_POOL_CONNECTIONS = 4
RETRYABLE_STATUSES = frozenset({408, 409, 429})
_DETAIL_CHARS = 300

Send = Callable[[httpx.Request], Awaitable[httpx.Response]]

SENDING_EVENT = ".send_request_headers.started"  # httpcore's trace event name, and ours


def _sending_trace(on_sent: Callable[[], None]) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """An httpx `trace` extension calling `on_sent` as the request starts going out: httpx's
    own transport (httpcore) and Loom's (core.llm.http11) both send that event."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith(SENDING_EVENT):
            on_sent()

    return trace


def _bounded(client: httpx.AsyncClient) -> Send:
    """`client.send` reading at most MAX_RESPONSE_BYTES of the body."""

    async def send(request: httpx.Request) -> httpx.Response:
        response = await client.send(request, stream=True)
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ResponseTooLarge(MAX_RESPONSE_BYTES, request)
        finally:
            await response.aclose()
        # The body is decoded already: the headers must not ask for decoding again.
        headers = [(name, value) for name, value in response.headers.multi_items()
                   if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, content=bytes(body),
                              request=request)

    return send


def proxied(url: str) -> bool:
    """Whether the environment routes `url` through a proxy (HTTPS_PROXY, ALL_PROXY, ...)."""
    parsed = httpx.URL(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parsed.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parsed.host)


class HttpTransport(StrEnum):
    """Which HTTP transport a provider's pools use (transform.http_transport)."""

    LOOM = "loom"  # core.llm.http11: lean HTTP/1.1, no proxies
    HTTPX = "httpx"  # httpx's own (httpcore): knows proxies


# What `http_transport` unset means; the provider tests run once with each (tests/conftest.py).
DEFAULT_HTTP_TRANSPORT = HttpTransport.LOOM


class ConnectionPools:
    """Several connection pools of at most `pool_size` connections each, leased per request.

    Each pool is Loom's lean HTTP/1.1 transport, or an `httpx.AsyncClient` with httpx's own
    transport: when asked for, and when the environment sets a proxy for `url` (Loom's
    transport does not know proxies).
    """

    def __init__(self, *, concurrency: int, timeout_s: float, headers: dict[str, str],
                 pool_size: int | None = None, url: str | None = None,
                 transport: HttpTransport | None = None) -> None:
        concurrency = max(1, concurrency)
        chosen = transport or DEFAULT_HTTP_TRANSPORT
        self.uses_httpx_transport = chosen is HttpTransport.HTTPX or (
            url is not None and proxied(url))
        default_size = MAX_HTTPX_POOL_CONNECTIONS if self.uses_httpx_transport else MAX_POOL_CONNECTIONS
        per_pool = min(concurrency, pool_size or default_size)
        count = math.ceil(concurrency / per_pool)
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
        self.headers = httpx.Headers({"content-type": "application/json", **headers})
        # One TLS context for all pools: building one loads the CA bundle (tens of ms each).
        tls = httpx.create_ssl_context()
        self.pools: list[Any]
        self._senders: list[Send]
        if self.uses_httpx_transport:
            limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
            clients = [httpx.AsyncClient(limits=limits, timeout=self.timeout, verify=tls)
                       for _ in range(count)]
            self.pools, self._senders = clients, [_bounded(client) for client in clients]
        else:
            transports = [Http11Transport(max_connections=per_pool, ssl_context=tls,
                                          timeout=self.timeout) for _ in range(count)]
            self.pools = transports
            self._senders = [t.handle_async_request for t in transports]
        self.pool_size = per_pool
        # One token per connection, interleaved so that consecutive requests use different pools.
        self._free: collections.deque[int] = collections.deque(
            index for _ in range(per_pool) for index in range(count))
        self._overflow = itertools.cycle(range(count))

    @contextlib.contextmanager
    def lease(self) -> Iterator[Send]:
        """A pool's `send` with a free connection; past capacity (callers without their own
        limit), the pools take turns and queue inside."""
        if self._free:
            index = self._free.popleft()
            try:
                yield self._senders[index]
            finally:
                self._free.append(index)
        else:
            yield self._senders[next(self._overflow)]

    def request(self, url: httpx.URL, content: bytes, *,
                on_sent: Callable[[], None] | None = None) -> httpx.Request:
        timeout = self.timeout
        extensions: dict[str, Any] = {"timeout": {"connect": timeout.connect, "read": timeout.read,
                                                  "write": timeout.write, "pool": timeout.pool}}
        if on_sent is not None:
            extensions["trace"] = _sending_trace(on_sent)
        return httpx.Request("POST", url, headers=self.headers, content=content,
                             extensions=extensions)

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful exchange: the parsed JSON body, how long it took, the response headers."""

    body: dict[str, Any]
    latency_s: float
    headers: httpx.Headers


class Exchange:
    """Posts one JSON body and returns the parsed JSON answer, or raises ProviderError.

    The whole exchange is bounded by `timeout_s` (a server trickling a byte a second cannot
    hold a call past it), the answer by MAX_RESPONSE_BYTES, and every secret the run knows
    (the API key, the header values, every resolved ${NAME}, the environment's provider keys:
    core.secrets_mask) is masked in what comes back, in its bytes and again in every decoded
    string: an endpoint that echoes the Authorization header, escaped or not, puts it nowhere."""

    def __init__(self, *, provider: str, pools: ConnectionPools, timeout_s: float,
                 secret: str | None, secrets: tuple[str, ...] = (),
                 masker: SecretMasker | None = None) -> None:
        self.provider = provider
        self.pools = pools
        self.timeout_s = timeout_s
        # The run's masker (every resolved ${NAME}, literal and environment key), so that an
        # answer echoing any of them is masked before it is kept anywhere; the key and header
        # values this exchange sends are added to it (one rule: core.secrets_mask).
        self.masker = masker if masker is not None else SecretMasker()
        self.masker.add([secret, *secrets])
        self._urls: dict[str, httpx.URL] = {}

    async def post_json(self, url: str, body: dict[str, Any], *, model: str) -> Reply:
        where = f"{self.provider} {model}"
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        request = self.pools.request(self._parsed(url), content, on_sent=request_sent.get())
        started = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for (3.11 can drop a cancel that lands with a result).
            async with asyncio.timeout(self.timeout_s):
                with self.pools.lease() as send:
                    response = await send(request)
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise ProviderError(f"{where}: no answer from {url} within {self.timeout_s:g}s "
                                f"({type(exc).__name__})", retryable=True) from exc
        except ResponseTooLarge as exc:
            raise ProviderError(f"{where}: {url} answered with more than {exc.limit:,} bytes",
                                retryable=False, status=200) from exc
        except httpx.RequestError as exc:
            raise ProviderError(f"{where}: connection to {url} failed: "
                                f"{self.redact(str(exc)) or type(exc).__name__}", retryable=True) from exc
        latency = time.perf_counter() - started
        status = response.status_code
        if status >= 400:
            raise self._status_error(where, url, response)
        raw = self.masker.mask_bytes(response.content)
        try:
            # Masked again once decoded: JSON may write a value's characters as \\uXXXX escapes.
            parsed = self.masker.mask_tree(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            # Not JSON, or nested past what any answer needs: worth another try.
            raise ProviderError(f"{where}: {url} answered with a body that is not JSON "
                                f"({len(raw)} bytes)", retryable=True, status=status) from exc
        if not isinstance(parsed, dict):
            raise ProviderError(f"{where}: {url} answered with JSON that is not an object",
                                retryable=True, status=status)
        return Reply(parsed, latency, response.headers)

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
        return self.masker.mask(text)

    def _status_error(self, where: str, url: str, response: httpx.Response) -> ProviderError:
        status = response.status_code
        error = api_error(response, masker=self.masker)
        detail = error.message
        retryable = should_retry(status, response.headers)
        if retryable and status == 429 and _out_of_quota(error):
            retryable = False  # no money left is not a rate limit: waiting changes nothing
        message = f"{where}: HTTP {status} from {url}"
        if detail:
            message += f": {detail}"
        return ProviderError(message, retryable=retryable, status=status,
                             retry_after=parse_retry_after(response.headers) if retryable else None,
                             param=error.param, code=error.code)


def _out_of_quota(error: "ApiError") -> bool:
    code = (error.code or "").lower()
    return code in ("insufficient_quota", "billing_error") or \
        "exceeded your current quota" in error.message.lower()


def should_retry(status: int, headers: httpx.Headers) -> bool:
    """Whether trying again may help: the server's own `x-should-retry` first (OpenAI and
    Anthropic send it), else by status."""
    if status == 429:
        return True  # a rate limit is waited out, whatever else the server says (quota is not)
    hint = (headers.get("x-should-retry") or "").strip().lower()
    if hint in ("true", "false"):
        return hint == "true"
    return status in RETRYABLE_STATUSES or status >= 500


def checked_base_url(url: str, provider: str) -> str:
    """The base URL without its trailing slash, or a PipelineError naming transform.base_url."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise PipelineError(f"{url!r} is not a URL ({exc})", key="transform.base_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PipelineError(f"{url!r}: {provider} needs an http:// or https:// URL",
                            key="transform.base_url")
    path, mark, query = url.partition("?")
    return path.rstrip("/") + mark + query


def endpoint(base_url: str, path: str) -> str:
    """`path` under the base URL, keeping the base URL's query string (Azure's
    `?api-version=…`) at the end where it belongs."""
    base, mark, query = base_url.partition("?")
    return f"{base.rstrip('/')}/{path.lstrip('/')}{mark}{query}"


def user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"loom/{version('loom-aietl')}"
    except PackageNotFoundError:
        return "loom"


@dataclass(frozen=True, slots=True)
class ApiError:
    message: str
    param: str | None = None
    code: str | None = None


def api_error(response: httpx.Response, *, masker: SecretMasker | None = None) -> ApiError:
    """The API's own words about the failure (OpenAI and Anthropic both send error.message;
    OpenAI names the parameter in error.param and the cause in error.code). Secrets are masked
    before the text is cut, so that no part of one survives at the cut, and in every decoded
    string too (JSON may escape a value's characters as \\uXXXX)."""
    masker = masker if masker is not None else SecretMasker()
    text = masker.mask(response.text)
    try:
        body = masker.mask_tree(json.loads(text))
    except (ValueError, RecursionError):
        body = None
    message: Any = None
    param = code = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message") or error.get("type")
            param = _short_text(error.get("param"))
            code = _short_text(error.get("code")) or _short_text(error.get("type"))
        elif isinstance(error, str):
            message = error
        message = message or body.get("message") or body.get("detail")
    if message is None:
        message = text
    message = " ".join(str(message).split())
    return ApiError(message if len(message) <= _DETAIL_CHARS else message[:_DETAIL_CHARS - 3] + "...",
                    param, code)


def _short_text(value: Any) -> str | None:
    return value[:100] if isinstance(value, str) and value else None


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds to wait before trying again, from every form servers use: `retry-after-ms`,
    `Retry-After` (seconds or an HTTP date), LiteLLM's `llm_provider-retry-after` (the
    upstream's, passed on), OpenAI's `x-ratelimit-reset-*` durations (`6m0s`) and Anthropic's
    `anthropic-ratelimit-*-reset` timestamps (RFC 3339). The longest wait any of them asks for
    among the limits that are used up (all of them, when none says which)."""
    current = now if now is not None else datetime.now(timezone.utc).timestamp()
    waits = []
    for precise, plain in _RETRY_HEADERS:
        # The millisecond form, when sent, says the same as Retry-After more exactly.
        wait = _header_seconds(headers, precise, current)
        wait = wait if wait is not None else _header_seconds(headers, plain, current)
        if wait is not None:
            waits.append(wait)
    if waits:
        return max(waits)
    resets = [wait for name, remaining in _reset_headers(headers)
              if (wait := _header_seconds(headers, name, current)) is not None
              and (remaining is None or remaining <= 0)]
    return max(resets) if resets else None


def exhausted_wait(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """On a successful answer: how long until a limit that is now used up resets (the next
    request would get a 429), or None while there is room."""
    current = now if now is not None else datetime.now(timezone.utc).timestamp()
    waits = [wait for name, remaining in _reset_headers(headers)
             if remaining is not None and remaining <= 0
             and (wait := _header_seconds(headers, name, current)) is not None]
    return max(waits) if waits else None


_RETRY_HEADERS = (("retry-after-ms", "retry-after"),
                  ("llm_provider-retry-after-ms", "llm_provider-retry-after"))
_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


def _reset_headers(headers: httpx.Headers) -> list[tuple[str, float | None]]:
    """(reset header, what its limit has left) for each limit the server reports."""
    found = []
    for prefix in ("", "llm_provider-"):
        for limit in _LIMITS:
            for reset, remaining in ((f"{prefix}x-ratelimit-reset-{limit}", f"{prefix}x-ratelimit-remaining-{limit}"),
                                     (f"{prefix}anthropic-ratelimit-{limit}-reset",
                                      f"{prefix}anthropic-ratelimit-{limit}-remaining")):
                if reset in headers:
                    found.append((reset, _number(headers.get(remaining))))
    return found


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
                       r"(?:(\d+(?:\.\d+)?)ms)?")


def _header_seconds(headers: httpx.Headers, name: str, now: float) -> float | None:
    value = (headers.get(name) or "").strip()
    if not value:
        return None
    if name.endswith("-ms"):
        number = _number(value)
        return max(0.0, number / 1000.0) if number is not None else None
    number = _number(value)
    if number is not None:
        return max(0.0, number)
    duration = _DURATION.fullmatch(value)
    if duration and any(duration.groups()):
        hours, minutes, seconds, millis = (float(part or 0) for part in duration.groups())
        return hours * 3600 + minutes * 60 + seconds + millis / 1000
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None

# Gateways that price the call themselves say so in a header (LiteLLM's proxy does).
_COST_HEADERS = ("x-litellm-response-cost",)


def reported_cost(headers: httpx.Headers) -> float | None:
    """USD the gateway says the call cost, or None when it says nothing usable."""
    for name in _COST_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        try:
            cost = float(value)
        except ValueError:
            continue
        if math.isfinite(cost) and cost >= 0:
            return cost
    return None
