"""Endpoints that misbehave on purpose: a trickle that never ends, an answer too large to
hold, a body nested past reason, and servers that echo the key back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import pytest

from core.errors import ProviderError
from core.llm.base import LLMRequest
from core.llm.http11 import MAX_RESPONSE_BYTES
from core.llm.openai import OpenAIProvider

KEY = "sk-REDTEAMSECRET-9f8e7d6c5b4a39281706"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.AbstractServer, str]:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        try:
            await handler(reader, writer, head)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


def reply(status: int, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


def completion(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()


def the_request() -> LLMRequest:
    return LLMRequest(model="m", messages=[{"role": "user", "content": "hi"}])


async def ask(base_url: str, **options) -> object:
    provider = OpenAIProvider(name="openai_compatible", base_url=base_url, api_key=KEY, **options)
    try:
        return await provider.complete(the_request())
    finally:
        await provider.aclose()


async def test_timeout_s_bounds_the_whole_request_not_each_read():
    async def trickle(reader, writer, head):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n")
        while True:  # a byte every 0.2 s: each read is quick, the answer never ends
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)

    server, url = await serve(trickle)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="no answer .* within 1s"):
        await ask(url, timeout_s=1.0)
    assert time.monotonic() - started < 3
    server.close()


async def test_a_cancel_does_not_wait_on_a_stalled_socket():
    async def stall(reader, writer, head):
        await asyncio.sleep(3600)

    server, url = await serve(stall)
    task = asyncio.create_task(ask(url, timeout_s=3600))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1
    server.close()


async def test_an_answer_past_the_size_limit_is_refused():
    async def huge(reader, writer, head):
        size = MAX_RESPONSE_BYTES + 1024
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    server, url = await serve(huge)
    with pytest.raises(ProviderError, match="more than 16,777,216 bytes") as refused:
        await ask(url, timeout_s=30)
    assert not refused.value.retryable
    server.close()


async def test_a_body_nested_past_reason_is_a_malformed_answer():
    deep = b"[" * 100_000 + b"]" * 100_000

    async def nested(reader, writer, head):
        writer.write(reply(200, deep))

    server, url = await serve(nested)
    with pytest.raises(ProviderError, match="not JSON") as failed:
        await ask(url, timeout_s=5)
    assert failed.value.retryable
    server.close()


@pytest.mark.parametrize("status", [200, 400, 500])
async def test_an_endpoint_echoing_the_key_puts_it_nowhere(status):
    async def echo(reader, writer, head):
        auth = next(line for line in head.decode().split("\r\n") if line.lower().startswith("authorization"))
        if status == 200:
            writer.write(reply(200, completion(f"you sent {auth}")))
        else:
            # A non-JSON refusal, the key straddling the 300-character cut of error details.
            writer.write(reply(status, ("x" * 280 + f" {auth} " + "y" * 50).encode()))

    server, url = await serve(echo)
    try:
        answer = await ask(url, timeout_s=5)
        text = json.dumps({"text": answer.text, "raw": answer.raw})
    except ProviderError as exc:
        text = str(exc)
    server.close()
    assert KEY not in text and KEY[:20] not in text and "REDTEAMSECRET" not in text
    assert "***" in text or status != 200
