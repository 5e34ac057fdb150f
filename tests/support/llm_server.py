"""A loopback LLM server: the OpenAI and Anthropic wire formats on 127.0.0.1, faults on demand.

Every LLM test and benchmark talks to this instead of a vendor. Two ways to run it:

    with LLMServer(latency_s=0.0, seed=1) as server:   # in tests: a thread with its own loop
        server.base_url            # http://127.0.0.1:PORT/v1  (OpenAI; Anthropic: anthropic_base_url)
        server.faults.rate_429 = 0.3
        server.script(["429", "500", "malformed", "ok"])

    python tests/support/llm_server.py --port 0 --latency-ms 50   # benchmarks: prints "PORT <n>"
    curl http://127.0.0.1:<n>/loopback/stats                      # what a separate server has seen

Answers are deterministic: a line `reply: <text>` in the last user message is the answer (a
prompt template can say `reply: {"sentiment": "{{ input.expected }}"}`); a later user turn
without such a line (a repair request) gets the earlier turn's reply again. Otherwise the
`responder` callable's answer, otherwise `{"ok": true}`. Usage is about a token per 4 chars.

Scripted or random faults: "429[:seconds]" (with Retry-After), "500", "503", "529",
"400[:message]", "401", "timeout" (sleeps past any sane client timeout), "malformed" (truncated
JSON), "empty" (JSON without choices/content), "reset" (TCP reset, no answer), "ok". A 429, 500,
503 or 529 may end in ":noretry" or ":retry" ("429:noretry", "429:4:noretry", "503:retry") to
send the `x-should-retry: false|true` header the official SDKs obey. Every request's headers are
kept beside its body (`server.headers[i]`, e.g. to assert a User-Agent).

Strict mode (`LLMServer(strict=True)`, `--strict`) rejects what the real APIs reject, with their
status, `error.type` and `error.message` (and OpenAI's `error.param`/`error.code`), from the model
table and rules in tests/support/llm_rules.py (its docstring and that table say which models
reject what): unknown body keys, sampling parameters on reasoning models (OpenAI) and on models
with fixed sampling (Anthropic), `max_tokens` on reasoning models, strict json_schema rules and
non-object roots, json_object without "json" in the messages, forced tools on models that refuse
them, native `output_config.format` on models without it, more than 4 cache breakpoints. Answers
still come from `reply:` lines, whatever schema was asked for. Strict mode also simulates the
providers' prompt caches (`prompt_cache=`, default: as strict): OpenAI reports
`prompt_tokens_details.cached_tokens` for a prefix of >= 1024 tokens seen before (128-token
steps); Anthropic writes the prefix up to each `cache_control` breakpoint (or the top-level
automatic one) once it reaches the model's minimum (`cache_creation_input_tokens`,
`cache_creation.ephemeral_5m/1h_input_tokens`) and reads it afterwards
(`cache_read_input_tokens`), `input_tokens` counting only the rest. With
`reasoning_spends_budget_below=N` a reasoning model (an OpenAI reasoning model given
`max_completion_tokens` < N; an Anthropic model that always thinks, or any with `thinking`
on, given `max_tokens` < N) spends the whole budget reasoning: empty content,
`finish_reason: "length"` / `stop_reason: "max_tokens"`, and the budget as reasoning tokens.

This file imports only the standard library and aiohttp so that it runs as a plain script.
The request path must stay cheap: a benchmark drives hundreds of requests a second through it,
so nothing of strict mode (not even the import of llm_rules) runs unless it is on.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import random
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
STATS_PATH = "/loopback/stats"  # GET: {"requests": n, "per_path": {...}, "in_flight": n, ...}
_REPLY = re.compile(r"^[ \t]*reply:[ \t]*(.*?)[ \t\r]*$", re.MULTILINE)
_JSON = "application/json"


@dataclass
class Faults:
    """Chance (0..1) that a request fails each way; drawn from the server's seeded RNG."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_529: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    rate_reset: float = 0.0
    retry_after_s: float = 1.0  # the hint sent with a 429
    timeout_sleep_s: float = 30.0  # how long a "timeout" request hangs before answering

    def draw(self, rng: random.Random) -> str | None:
        roll = rng.random()
        for name in ("429", "500", "529", "timeout", "malformed", "reset"):
            rate = getattr(self, f"rate_{name}")
            if roll < rate:
                return name
            roll -= rate
        return None

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self) if f.name.startswith("rate_"))


Responder = Callable[[dict[str, Any]], str]


class RequestCount(int):
    """How many requests arrived: compares as the total, `count[path]` gives one path's."""

    def __new__(cls, per_path: dict[str, int]) -> "RequestCount":
        count = super().__new__(cls, sum(per_path.values()))
        count.per_path = dict(per_path)
        return count

    per_path: dict[str, int]

    def __getitem__(self, path: str) -> int:
        return self.per_path.get(path, 0)


class LoopbackLLM:
    """The request handling and the state tests look at; no threads, no sockets."""

    def __init__(self, *, latency_s: float = 0.0, seed: int = 1, responder: Responder | None = None,
                 api_key: str | None = None, keep_requests: int = 10_000, strict: bool = False,
                 prompt_cache: bool | None = None, reasoning_spends_budget_below: int = 0) -> None:
        self.latency_s = latency_s
        self.responder = responder
        self.api_key = api_key  # when set, requests without it get a 401
        self.cached_tokens = 0  # reported as prompt-cache hits, capped at the prompt's tokens
        # strict: reject what the real APIs reject (tests/support/llm_rules.py), with their
        # error shapes. prompt_cache (default: as strict): simulate the providers' prompt
        # caches. reasoning_spends_budget_below: a reasoning model given fewer output tokens
        # than this spends them all on reasoning and answers "" (finish_reason "length").
        self.strict = strict
        self.prompt_cache = strict if prompt_cache is None else prompt_cache
        self.reasoning_spends_budget_below = reasoning_spends_budget_below
        self._mode: Any = None  # llm_rules.StrictMode, made when a strict flag is first on
        self.faults = Faults()
        self._rng = random.Random(seed)
        self._script: collections.deque[str] = collections.deque()
        self._script_lock = threading.Lock()
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_requests)
        self.headers: collections.deque[dict[str, str]] = collections.deque(maxlen=keep_requests)
        self._count: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._serial = 0

    def _strict_mode(self) -> Any:
        if self._mode is None:
            try:
                from tests.support import llm_rules
            except ImportError:  # run as a plain script: the sibling module
                import llm_rules  # type: ignore[no-redef]
            self._mode = llm_rules.StrictMode()
        return self._mode

    # ------------------------------------------------------------ test controls

    def script(self, actions: list[str]) -> None:
        """The next len(actions) requests do these, in order, whatever the fault rates say."""
        with self._script_lock:
            self._script.extend(actions)

    def reset(self) -> None:
        with self._script_lock:
            self._script.clear()
        self.faults = Faults()
        self.requests.clear()
        self.headers.clear()
        self._count.clear()
        self.max_in_flight = self.in_flight
        if self._mode is not None:
            self._mode.clear()

    @property
    def count(self) -> RequestCount:
        """Requests received: `server.count == 3`, `server.count[OPENAI_PATH] == 2`."""
        return RequestCount(self._count)

    # ------------------------------------------------------------ serving

    def _next_action(self) -> str:
        if self._script:
            with self._script_lock:
                if self._script:
                    return self._script.popleft()
        if self.faults.active:
            return self.faults.draw(self._rng) or "ok"
        return "ok"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path == STATS_PATH:
            # For a test driving this server as a separate process: what it has seen.
            return web.Response(body=json.dumps({
                "requests": int(self.count), "per_path": self.count.per_path,
                "in_flight": self.in_flight, "max_in_flight": self.max_in_flight}).encode(),
                content_type=_JSON)
        if request.method != "POST" or path not in (OPENAI_PATH, ANTHROPIC_PATH):
            return _error(404, f"no such endpoint: {request.method} {path}", path)
        self._count[path] += 1
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "the request body is not JSON", path)
        if self.requests.maxlen:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            return await self._act(self._next_action(), request, body, path)
        finally:
            self.in_flight -= 1

    async def _act(self, action: str, request: web.BaseRequest, body: Any,
                   path: str) -> web.StreamResponse:
        name, _, argument = action.partition(":")
        retry: dict[str, str] = {}
        if argument in ("retry", "noretry") or argument.endswith((":retry", ":noretry")):
            argument, _, hint = argument.rpartition(":") if ":" in argument else ("", "", argument)
            retry = {"x-should-retry": "true" if hint == "retry" else "false"}
        if name == "ok":
            pass
        elif name == "429":
            wait = float(argument) if argument else self.faults.retry_after_s
            headers = {"retry-after": str(int(wait))} if wait == int(wait) else \
                {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))}
            return _error(429, "Rate limit reached for requests (loopback)", path,
                          headers={**headers, **retry}, kind="rate_limit_error")
        elif name in ("500", "503", "529"):
            message, kind = {
                "500": ("The server had an error while processing your request (loopback)",
                        "server_error" if path == OPENAI_PATH else "api_error"),
                "503": ("Service unavailable (loopback)",
                        "server_error" if path == OPENAI_PATH else "api_error"),
                "529": ("Overloaded", "overloaded_error")}[name]
            return _error(int(name), message, path, kind=kind, headers=retry or None)
        elif name in ("400", "401"):
            return _error(int(name), argument or ("Invalid request (loopback)" if name == "400"
                                                  else "Incorrect API key provided"), path,
                          kind="invalid_request_error" if name == "400" else "authentication_error")
        elif name == "timeout":
            await asyncio.sleep(self.faults.timeout_sleep_s)
        elif name == "malformed":
            whole = json.dumps(self._answer(body, path, request)).encode()
            return web.Response(body=whole[: max(1, len(whole) // 2)], content_type=_JSON)
        elif name == "empty":
            shell = {"id": "loopback-empty", "choices": []} if path == OPENAI_PATH else \
                {"id": "loopback-empty", "type": "message", "content": None}
            return web.Response(body=json.dumps(shell).encode(), content_type=_JSON)
        elif name == "reset":
            _reset_connection(request)
            return web.Response(status=500)  # never reaches the client: the socket is gone
        else:
            return _error(500, f"loopback: unknown scripted action {action!r}", path)
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object", path)
        problem = self._check(body, request, path)
        if problem is not None:
            return problem
        return web.Response(body=json.dumps(self._answer(body, path, request)).encode(),
                            content_type=_JSON)

    def _check(self, body: dict[str, Any], request: web.BaseRequest,
               path: str) -> web.Response | None:
        if self.strict:
            problem = self._strict_mode().check(path == ANTHROPIC_PATH, body, request.headers,
                                                self.api_key)
            return None if problem is None else _error(
                problem.status, problem.message, path, kind=problem.kind, param=problem.param,
                code=problem.code)
        if path == ANTHROPIC_PATH:
            if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
                return _error(401, "invalid x-api-key", path, kind="authentication_error")
            if "anthropic-version" not in request.headers:
                return _error(400, "anthropic-version: header is required", path)
            if not isinstance(body.get("max_tokens"), int):
                return _error(400, "max_tokens: Field required", path)
        elif self.api_key is not None and \
                request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided", path, kind="invalid_request_error")
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return _error(400, "model and messages are required", path)
        return None

    def _answer(self, body: Any, path: str, request: web.BaseRequest) -> dict[str, Any]:
        body = body if isinstance(body, dict) else {}
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        prompt = "".join(_text(m.get("content")) for m in messages if isinstance(m, dict))
        if path == ANTHROPIC_PATH:
            prompt = _text(body.get("system")) + prompt
        # The latest user turn with a reply: line decides, so a follow-up turn without one (a
        # repair request) gets the same answer again, as a stubborn model would give.
        found = None
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                found = _REPLY.search(_text(message.get("content")))
                if found:
                    break
        if found:
            answer = found.group(1)
        elif self.responder is not None:
            answer = self.responder(body)
        else:
            answer = '{"ok": true}'
        prompt_tokens = len(prompt) // 4 + 1
        self._serial += 1
        model = body.get("model") or "loopback"
        if path == ANTHROPIC_PATH:
            return self._anthropic(body, model, answer, prompt_tokens)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and len(answer) // 4 + 1 > limit:
            answer, finish = answer[: limit * 4], "length"
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens, "completion_tokens": len(answer) // 4 + 1,
            "total_tokens": prompt_tokens + len(answer) // 4 + 1,
            "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt_tokens)}}
        if self.strict or self.prompt_cache or self.reasoning_spends_budget_below:
            answer, finish = self._strict_mode().openai_answer(
                body, prompt, answer, finish, usage, prompt_cache=self.prompt_cache,
                spend_below=self.reasoning_spends_budget_below)
        return {
            "id": f"chatcmpl-loopback-{self._serial}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": finish}],
            "usage": usage,
        }

    def _anthropic(self, body: dict[str, Any], model: str, answer: str,
                   prompt_tokens: int) -> dict[str, Any]:
        cached = min(self.cached_tokens, prompt_tokens)
        usage: dict[str, Any] = {
            "input_tokens": prompt_tokens - cached, "output_tokens": len(answer) // 4 + 1,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}
        structured = False
        if self.strict or self.prompt_cache or self.reasoning_spends_budget_below:
            mode = self._strict_mode()
            if mode.anthropic_usage(body, usage, prompt_tokens, prompt_cache=self.prompt_cache,
                                    spend_below=self.reasoning_spends_budget_below):
                return {"id": f"msg_loopback_{self._serial}", "type": "message",
                        "role": "assistant", "model": model,
                        "content": [{"type": "text", "text": ""}], "stop_reason": "max_tokens",
                        "stop_sequence": None, "usage": usage}
            structured = mode.structured(body)
        tools = body.get("tools")
        if isinstance(tools, list) and tools and not structured:
            # A model forced to call a tool always produces an object for its input.
            try:
                value = json.loads(answer)
            except ValueError:
                value = {"text": answer}
            if not isinstance(value, dict):
                value = {"value": value}
            choice = body.get("tool_choice") or {}
            tool = choice.get("name") if isinstance(choice, dict) and choice.get("name") else \
                tools[0].get("name", "tool")
            content = [{"type": "tool_use", "id": f"toolu_loopback_{self._serial}", "name": tool,
                        "input": value}]
            stop = "tool_use"
        else:
            stop = "end_turn"
            limit = body.get("max_tokens")
            if isinstance(limit, int) and len(answer) // 4 + 1 > limit:
                answer, stop = answer[: limit * 4], "max_tokens"
                usage["output_tokens"] = len(answer) // 4 + 1
            content = [{"type": "text", "text": answer}]
        return {"id": f"msg_loopback_{self._serial}", "type": "message", "role": "assistant",
                "model": model, "content": content, "stop_reason": stop, "stop_sequence": None,
                "usage": usage}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts / blocks
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _error(status: int, message: str, path: str, *, headers: dict[str, str] | None = None,
           kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> web.Response:
    if path == ANTHROPIC_PATH:
        payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type=_JSON,
                        headers=headers)


def _reset_connection(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST, the way a crashed proxy does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


async def _serve(app: LoopbackLLM, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> tuple[web.ServerRunner, int]:
    server = web.Server(app.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=0.2)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    site = web.SockSite(runner, sock, backlog=1024, ssl_context=ssl_context)
    await site.start()
    return runner, sock.getsockname()[1]


class LLMServer(LoopbackLLM):
    """The loopback server on a background thread with its own event loop."""

    def __init__(self, *, latency_s: float = 0.0, seed: int = 1, responder: Responder | None = None,
                 api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 keep_requests: int = 10_000, strict: bool = False,
                 prompt_cache: bool | None = None, reasoning_spends_budget_below: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context`: serve HTTPS with it (tests/unit/test_http11.py makes one with trustme)."""
        super().__init__(latency_s=latency_s, seed=seed, responder=responder, api_key=api_key,
                         keep_requests=keep_requests, strict=strict, prompt_cache=prompt_cache,
                         reasoning_spends_budget_below=reasoning_spends_budget_below)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """For OpenAI-style clients (their base URL ends in /v1)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For Anthropic-style clients (they add /v1/messages themselves)."""
        return self.url

    def start(self) -> "LLMServer":
        self._thread = threading.Thread(target=self._run, name="loopback-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the loopback LLM server did not start within 10 s")
        if self._failure is not None:
            raise RuntimeError(f"the loopback LLM server failed to start: {self._failure}") \
                from self._failure
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = None
        try:
            runner, self.port = loop.run_until_complete(_serve(self, self.host, self.port,
                                                                   self.ssl_context))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "LLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback LLM server (OpenAI and Anthropic formats)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api-key", default=None, help="require this key")
    for name in ("429", "500", "529", "timeout", "malformed", "reset"):
        parser.add_argument(f"--rate-{name}", type=float, default=0.0, metavar="P",
                            help=f"chance of a {name} answer")
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds sent with a 429")
    parser.add_argument("--strict", action="store_true",
                        help="reject what the real APIs reject (tests/support/llm_rules.py)")
    parser.add_argument("--prompt-cache", action=argparse.BooleanOptionalAction, default=None,
                        help="simulate the providers' prompt caches (default: with --strict)")
    parser.add_argument("--reasoning-spends-budget-below", type=int, default=0, metavar="N",
                        help="reasoning models given fewer than N output tokens answer empty")
    args = parser.parse_args(argv)

    app = LoopbackLLM(latency_s=args.latency_ms / 1000.0, seed=args.seed, api_key=args.api_key,
                      keep_requests=0, strict=args.strict, prompt_cache=args.prompt_cache,
                      reasoning_spends_budget_below=args.reasoning_spends_budget_below)
    for name in ("429", "500", "529", "timeout", "malformed", "reset"):
        setattr(app.faults, f"rate_{name}", getattr(args, f"rate_{name}"))
    app.faults.retry_after_s = args.retry_after

    async def serve() -> None:
        runner, port = await _serve(app, args.host, args.port)
        print(f"PORT {port}", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        try:
            await stopped.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
