"""A lean HTTP/1.1 keep-alive transport for httpx: asyncio protocols and h11, nothing else.

Why it exists: Loom's whole budget is about 1 ms of CPU per record, and httpx's default
transport (httpcore over anyio) spends 0.6-0.7 ms of it on each request, mostly in anyio cancel
scopes, locks and events around every read and write (measured against the loopback server at
32 in flight). This transport does the same HTTP/1.1 exchange through h11 — the parser httpcore
itself uses — with one asyncio protocol per connection and a plain list of idle connections,
for about a third of that.

It is an ordinary `httpx.AsyncBaseTransport`: it takes an `httpx.Request`, returns an
`httpx.Response` and raises httpx's own exceptions, so it also works inside an
`httpx.AsyncClient`. What it deliberately does not do, because Loom's LLM calls do not need it:
HTTP/2, proxies (a provider with a proxy in its environment gets httpx's own transport, see
`core.llm.transport`) and streaming (a response body is read whole before it is returned).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any

import h11
import httpx

# An idle connection older than this is closed rather than reused: servers drop idle
# keep-alive connections after a while (aiohttp after 75 s, many proxies after 60 s or less),
# and a request sent on a connection the server is closing fails for nothing.
KEEPALIVE_EXPIRY_S = 15.0
_READ_SIZE = 65536
# No model answer comes near this (100k tokens of JSON is a few MB); past it a server is broken
# or hostile, and the answer is refused rather than held in memory and written to the store.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class ResponseTooLarge(httpx.ReadError):
    """The body passed the transport's limit: the connection is dropped, nothing is kept."""

    def __init__(self, limit: int, request: httpx.Request) -> None:
        super().__init__(f"the response is larger than {limit:,} bytes", request=request)
        self.limit = limit


class _Protocol(asyncio.Protocol):
    """Collects what the server sends; wakes the one reader waiting for it."""

    __slots__ = ("transport", "chunks", "eof", "error", "waiter", "paused", "drain_waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        _wake(self.waiter)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self.waiter)
        return False  # close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.error = exc
        _wake(self.waiter)
        _wake(self.drain_waiter)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        _wake(self.drain_waiter)


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _wait(future: asyncio.Future[None], timeout: float | None) -> None:
    """Await `future`, failing with TimeoutError after `timeout` seconds (one timer, no task)."""
    if timeout is None:
        await future
        return
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
    try:
        await future
    finally:
        timer.cancel()


class _Connection:
    """One keep-alive TCP (or TLS) connection to one origin, used by one request at a time."""

    max_body = MAX_RESPONSE_BYTES

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self.transport = transport
        self.protocol = protocol
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = time.monotonic()

    def usable(self, now: float) -> bool:
        """Idle, open, not expired, and the server has sent nothing unasked (a close, a 408)."""
        protocol = self.protocol
        return (not protocol.eof and not protocol.chunks and not self.transport.is_closing()
                and now - self.idle_since < KEEPALIVE_EXPIRY_S)

    def close(self) -> None:
        self.transport.close()

    async def exchange(self, request: httpx.Request, timeouts: dict[str, Any]) -> httpx.Response:
        h = self.h11
        body = request.content
        out = h.send(h11.Request(method=request.method, target=request.url.raw_path,
                                 headers=request.headers.raw))
        if body:
            out += h.send(h11.Data(data=body))
        out += h.send(h11.EndOfMessage())
        protocol = self.protocol
        if protocol.error is not None or self.transport.is_closing():
            raise httpx.WriteError("the connection closed before the request was sent",
                                   request=request)
        trace = request.extensions.get("trace")
        if trace is not None:
            # The event httpcore sends at this point (core.llm.transport.request_sent).
            await trace("http11.send_request_headers.started", {"request": request})
        self.transport.write(out)
        if protocol.paused:
            protocol.drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(protocol.drain_waiter, timeouts.get("write"))
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request", request=request) from None
            finally:
                protocol.drain_waiter = None
            if protocol.error is not None:
                raise httpx.WriteError(f"the connection failed: {protocol.error}",
                                       request=request)

        read_timeout = timeouts.get("read")
        response: h11.Response | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"the server broke HTTP/1.1: {exc}",
                                                request=request) from exc
            if event is h11.NEED_DATA:
                if not protocol.chunks:
                    if protocol.eof:
                        if protocol.error is not None:
                            raise httpx.ReadError(f"the connection failed: {protocol.error}",
                                                  request=request) from protocol.error
                        h.receive_data(b"")  # the server closed: h11 decides if that is an error
                        continue
                    protocol.waiter = asyncio.get_running_loop().create_future()
                    try:
                        await _wait(protocol.waiter, read_timeout)
                    except TimeoutError:
                        raise httpx.ReadTimeout("timed out waiting for the response",
                                                request=request) from None
                    finally:
                        protocol.waiter = None
                    continue
                data = protocol.chunks.popleft() if len(protocol.chunks) == 1 else \
                    b"".join(_drain(protocol.chunks))
                h.receive_data(data)
                continue
            kind = type(event)
            if kind is h11.Data:
                chunks.append(event.data)  # type: ignore[union-attr]
                size += len(event.data)  # type: ignore[union-attr]
                if size > self.max_body:
                    raise ResponseTooLarge(self.max_body, request)
            elif kind is h11.Response:
                response = event  # type: ignore[assignment]
            elif kind is h11.EndOfMessage:
                break
            elif kind is h11.ConnectionClosed:
                raise httpx.RemoteProtocolError("the server closed the connection without "
                                                "answering", request=request)
            # InformationalResponse (100 Continue): nothing to do, read on.
        assert response is not None
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            self.idle_since = time.monotonic()
        else:
            self.close()  # Connection: close, or a body we did not read to its end
        # h11 hands out bytearrays; httpx takes only bytes as a body it can hold.
        content = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
        return httpx.Response(
            response.status_code, headers=list(response.headers), content=content,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason})


def _drain(chunks: collections.deque[bytes]) -> list[bytes]:
    out = list(chunks)
    chunks.clear()
    return out


class Http11Transport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections, at most `max_connections` open at once."""

    def __init__(self, *, max_connections: int = 32, ssl_context: ssl.SSLContext | None = None,
                 timeout: httpx.Timeout | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self._ssl = ssl_context
        self._timeout = timeout or httpx.Timeout(60.0)
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._open = 0
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    def _timeouts(self, request: httpx.Request) -> dict[str, Any]:
        given: dict[str, Any] | None = request.extensions.get("timeout")
        if given:
            return given
        t = self._timeout
        return {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.pool}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}",
                                            request=request)
        origin = (scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80))
        timeouts = self._timeouts(request)
        slots = self._slots
        if slots.locked():
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when
                # its task is cancelled just as the awaited thing completes, and the cancel is
                # lost (a cancelled run then waited forever for this worker).
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection came free in time", request=request) from None
        else:
            await slots.acquire()  # free: returns at once
        try:
            connection = self._reuse(origin) or await self._connect(origin, request, timeouts)
            try:
                response = await connection.exchange(request, timeouts)
            except BaseException:
                connection.close()
                self._open -= 1
                raise
            if connection.transport.is_closing():
                self._open -= 1
            else:
                self._idle.setdefault(origin, []).append(connection)
            return response
        finally:
            slots.release()

    def _reuse(self, origin: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if connection.usable(now):
                return connection
            connection.close()
            self._open -= 1
        return None

    async def _connect(self, origin: tuple[bytes, bytes, int], request: httpx.Request,
                       timeouts: dict[str, Any]) -> _Connection:
        # Room for a new connection: close an idle one to another origin when at the limit.
        if self._open >= self.max_connections:
            for idle in self._idle.values():
                if idle:
                    idle.pop().close()
                    self._open -= 1
                    break
        scheme, host, port = origin
        tls = None
        if scheme == b"https":
            tls = self._ssl or httpx.create_ssl_context()
            self._ssl = tls
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        try:
            async with asyncio.timeout(timeouts.get("connect")):  # not wait_for: see above
                transport, protocol = await loop.create_connection(
                    _Protocol, hostname, port, ssl=tls, server_hostname=hostname if tls else None)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {hostname}:{port}",
                                       request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {hostname}:{port}: "
                                     f"{exc.strerror or exc if isinstance(exc, OSError) else exc}",
                                     request=request) from exc
        self._open += 1
        return _Connection(transport, protocol)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
                self._open -= 1
        self._idle.clear()
