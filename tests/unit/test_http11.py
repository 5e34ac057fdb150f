"""Loom's HTTP/1.1 transport against real servers on 127.0.0.1: keep-alive, chunked bodies,
closes, resets, timeouts and its connection limit, on its own and inside an httpx client."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from aiohttp import web

from core.llm.http11 import Http11Transport
from tests.support.llm_server import LLMServer

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "reply: {\"a\": 1}"}]})


@pytest.fixture
def llm_server():
    with LLMServer(latency_s=0.0, seed=3) as server:
        yield server


def post(url: str, *, timeout: float = 5.0) -> httpx.Request:
    t = httpx.Timeout(timeout)
    return httpx.Request("POST", url, content=BODY.encode(), headers={"content-type": "application/json"},
                         extensions={"timeout": {"connect": t.connect, "read": t.read,
                                                 "write": t.write, "pool": t.pool}})


async def eventually(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture
async def odd_server():
    """Answers the loopback server does not give: chunked bodies, Connection: close, and an
    idle keep-alive timeout short enough to watch."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        response.content_type = "application/json"
        await response.prepare(request)
        for part in (b'{"parts": ', b'[1, 2, ', b'3]}'):
            await response.write(part)
        await response.write_eof()
        return response

    async def closing(request: web.Request) -> web.Response:
        return web.json_response({"closing": True}, headers={"Connection": "close"})

    app = web.Application()
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/close", closing)
    runner = web.AppRunner(app, keepalive_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_requests_reuse_one_keep_alive_connection(llm_server):
    transport = Http11Transport(max_connections=4)
    try:
        for _ in range(10):
            response = await transport.handle_async_request(post(f"{llm_server.base_url}/chat/completions"))
            assert response.status_code == 200
            assert response.json()["choices"][0]["message"]["content"] == '{"a": 1}'
        assert transport.open_connections == 1
    finally:
        await transport.aclose()
    assert transport.open_connections == 0


async def test_it_works_as_the_transport_of_an_httpx_client(llm_server):
    async with httpx.AsyncClient(transport=Http11Transport()) as client:
        response = await client.post(f"{llm_server.base_url}/chat/completions", content=BODY,
                                     headers={"content-type": "application/json"})
        assert response.status_code == 200 and response.http_version == "HTTP/1.1"
        assert response.headers["content-type"].startswith("application/json")
        missing = await client.post(f"{llm_server.url}/nowhere", content=BODY)
        assert missing.status_code == 404 and "no such endpoint" in missing.text


async def test_chunked_bodies_and_connection_close_are_handled(odd_server):
    transport = Http11Transport()
    try:
        response = await transport.handle_async_request(post(f"{odd_server}/chunked"))
        assert response.json() == {"parts": [1, 2, 3]}
        assert transport.open_connections == 1
        response = await transport.handle_async_request(post(f"{odd_server}/close"))
        assert response.json() == {"closing": True}
        assert transport.open_connections == 0  # the server said close: not kept
    finally:
        await transport.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(odd_server):
    transport = Http11Transport()
    try:
        await transport.handle_async_request(post(f"{odd_server}/chunked"))
        (idle,) = next(iter(transport._idle.values()))
        await eventually(lambda: idle.protocol.eof, "the server drops the idle connection")
        response = await transport.handle_async_request(post(f"{odd_server}/chunked"))
        assert response.status_code == 200
        assert transport.open_connections == 1  # a new one; the dead one was discarded
    finally:
        await transport.aclose()


async def test_a_reset_is_a_transport_error_and_the_next_request_reconnects(llm_server):
    llm_server.script(["reset"])
    transport = Http11Transport()
    try:
        with pytest.raises(httpx.TransportError):
            await transport.handle_async_request(post(f"{llm_server.base_url}/chat/completions"))
        assert transport.open_connections == 0
        response = await transport.handle_async_request(post(f"{llm_server.base_url}/chat/completions"))
        assert response.status_code == 200
    finally:
        await transport.aclose()


async def test_a_slow_answer_is_a_read_timeout_and_its_connection_is_dropped(llm_server):
    llm_server.faults.timeout_sleep_s = 5
    llm_server.script(["timeout"])
    transport = Http11Transport()
    try:
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(post(f"{llm_server.base_url}/chat/completions",
                                                      timeout=0.2))
        assert transport.open_connections == 0
    finally:
        await transport.aclose()


async def test_a_refused_connection_is_a_connect_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = Http11Transport()
    try:
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(post(f"http://127.0.0.1:{port}/v1/x"))
        assert transport.open_connections == 0
    finally:
        await transport.aclose()


async def test_no_more_connections_than_the_limit_and_a_pool_timeout_when_none_frees(llm_server):
    llm_server.latency_s = 0.05
    transport = Http11Transport(max_connections=2)
    try:
        responses = await asyncio.gather(*(
            transport.handle_async_request(post(f"{llm_server.base_url}/chat/completions"))
            for _ in range(8)))
        assert all(r.status_code == 200 for r in responses)
        assert llm_server.max_in_flight <= 2 and transport.open_connections == 2

        llm_server.faults.timeout_sleep_s = 5
        llm_server.script(["timeout", "timeout"])
        hung = [asyncio.create_task(transport.handle_async_request(
            post(f"{llm_server.base_url}/chat/completions", timeout=3))) for _ in range(2)]
        await eventually(lambda: transport._slots.locked(), "both connections are busy")
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(post(f"{llm_server.base_url}/chat/completions",
                                                      timeout=0.05))
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        assert transport.open_connections == 0  # cancelled mid-exchange: closed, not reused
    finally:
        await transport.aclose()


async def test_a_cancel_is_never_lost_whatever_the_moment_it_lands(llm_server):
    """A request cancelled at any step of its life ends cancelled. Python 3.11's wait_for
    returned the connection instead when the cancel and the connect landed in the same loop
    turn; the worker then went on with the run stopping around it, and the run never ended.
    Sweeping the cancel across the first loop turns hits that moment."""
    url = f"{llm_server.base_url}/chat/completions"
    lost = []
    for turns in range(40):
        transport = Http11Transport()
        task = asyncio.ensure_future(transport.handle_async_request(post(url)))
        for _ in range(turns):
            await asyncio.sleep(0)
        if task.done():
            await transport.aclose()
            continue
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"cancelled after {turns} loop turns, the request never ended"
        if not task.cancelled():
            lost.append(turns)
            response = task.result()
            await response.aread()
        await transport.aclose()
    assert not lost, f"the cancel was lost after {lost} loop turns"


@pytest.mark.parametrize("transport", ["loom", "httpx"])
async def test_a_request_says_it_is_going_out_once_connected_and_only_then(llm_server, transport):
    """The moment a call is made (core.llm.base.request_sent): both transports send the
    `send_request_headers.started` trace event once the connection is open, and never for a
    request whose connection could not be made."""
    from core.llm.transport import ConnectionPools

    pools = ConnectionPools(concurrency=1, timeout_s=5, headers={"content-type": "application/json"})
    events: list[str] = []

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=Http11Transport() if transport == "loom"
                                 else httpx.AsyncHTTPTransport())

    async with client() as http:
        answered = pools.request(httpx.URL(f"{llm_server.base_url}/chat/completions"),
                                 BODY.encode(), on_sent=lambda: events.append("sent"))
        response = await http.send(answered)
        assert response.status_code == 200 and events == ["sent"]

        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]  # closed again: nothing listens there
        refused = pools.request(httpx.URL(f"http://127.0.0.1:{port}/v1/chat/completions"),
                                BODY.encode(), on_sent=lambda: events.append("refused sent"))
        with pytest.raises(httpx.ConnectError):
            await http.send(refused)
    assert events == ["sent"]
    await pools.aclose()


def client_context(authority=None):
    import ssl

    context = ssl.create_default_context()
    if authority is not None:
        authority.configure_trust(context)
    return context


async def test_tls_requests_share_one_verified_connection(https_server, certificate_authority):
    """The branch every real OpenAI or Anthropic call takes: TLS, the certificate verified
    against the trusted CAs, the connection kept alive and reused."""
    transport = Http11Transport(ssl_context=client_context(certificate_authority))
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            response = await client.send(post(f"{https_server.base_url}/chat/completions"))
            assert response.status_code == 200
            assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"a": 1}
        assert transport.open_connections == 1


async def test_tls_refuses_a_certificate_it_cannot_verify(https_server, certificate_authority):
    """A certificate from a CA the client does not trust, or for another host name: no request
    is sent, the error says why, and no connection is left open."""
    import trustme

    untrusted = Http11Transport(ssl_context=client_context(trustme.CA()))
    async with httpx.AsyncClient(transport=untrusted) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.send(post(f"{https_server.base_url}/chat/completions"))
    assert untrusted.open_connections == 0

    trusting = Http11Transport(ssl_context=client_context(certificate_authority))
    elsewhere = f"https://127.0.0.2:{https_server.port}/v1/chat/completions"  # not on the cert
    async with httpx.AsyncClient(transport=trusting) as client:
        with pytest.raises(httpx.ConnectError):
            await client.send(post(elsewhere))
    assert https_server.count == 0
