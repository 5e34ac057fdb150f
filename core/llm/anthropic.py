"""Anthropic's Messages API.

Structured output goes through a forced tool: the schema becomes the input schema of a tool
named `output` that the model must call, and the tool call's input, serialized as JSON text, is
the answer. JSON without a schema forces the same tool with an open object schema.
"""

from __future__ import annotations

import json
import os
from typing import Any

from core.errors import ProviderError, SecretError
from core.llm.base import LLMRequest, LLMResponse, Provider, MalformedUsage, token_count
from core.llm.transport import ConnectionPools, Exchange, checked_base_url, reported_cost

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# The API requires max_tokens; a pipeline that sets none gets room for any ordinary answer.
DEFAULT_MAX_TOKENS = 4096
TOOL_NAME = "output"


class AnthropicProvider(Provider):
    name = "anthropic"

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 60.0, concurrency: int = 8) -> None:
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        if not api_key:
            raise SecretError("provider anthropic needs an API key: set ANTHROPIC_API_KEY "
                              "(or transform.api_key: ${ANTHROPIC_API_KEY})")
        self.base_url = checked_base_url(
            base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL, self.name)
        self.url = f"{self.base_url}/v1/messages"
        self.timeout_s = timeout_s
        headers = {"accept": "application/json", "x-api-key": api_key,
                   "anthropic-version": API_VERSION}
        self._pools = ConnectionPools(concurrency=concurrency, timeout_s=timeout_s, headers=headers,
                                      url=self.url)
        self._exchange = Exchange(provider=self.name, pools=self._pools, timeout_s=timeout_s,
                                  secret=api_key)

    def build_body(self, request: LLMRequest) -> dict[str, Any]:
        system = [m["content"] for m in request.messages if m.get("role") == "system"]
        messages = [{"role": m["role"], "content": m["content"]}
                    for m in request.messages if m.get("role") != "system"]
        body: dict[str, Any] = {
            "model": request.model, "messages": messages,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
            "temperature": request.temperature,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        # The Messages API has no seed: determinism comes from temperature 0 and Loom's cache.
        schema = request.output_schema
        if schema is None and request.json_mode:
            schema = {"type": "object"}
        if schema is not None:
            body["tools"] = [{"name": TOOL_NAME, "description": "Return the answer.",
                              "input_schema": schema}]
            body["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        reply = await self._exchange.post_json(self.url, self.build_body(request),
                                               model=request.model)
        try:
            response = self.parse(reply.body, request, reply.latency_s)
        except MalformedUsage as exc:
            # A bill that cannot be read is no answer to pay for: worth another try, like a
            # body that does not parse.
            raise self._exchange.malformed(request.model, self.url, f"a usable usage block ({exc})") from None
        response.reported_cost_usd = reported_cost(reply.headers)
        return response

    def parse(self, data: dict[str, Any], request: LLMRequest, latency: float) -> LLMResponse:
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self._exchange.malformed(request.model, self.url, "content")
        text: str | None = None
        for block in blocks:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                text = json.dumps(block.get("input"), ensure_ascii=False)
                break
        if text is None:
            parts = [b.get("text") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
            if not parts or not all(isinstance(p, str) for p in parts):
                if data.get("stop_reason") == "refusal":
                    raise ProviderError(f"anthropic {request.model}: the model refused to answer",
                                        retryable=False, status=200)
                raise self._exchange.malformed(request.model, self.url, "a text or tool_use block")
            text = "".join(parts)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        cached = token_count(usage, "cache_read_input_tokens")
        written = token_count(usage, "cache_creation_input_tokens")
        # cache_creation splits the writes by lifetime; without it every write is a 5-minute one.
        split = usage.get("cache_creation")
        written_1h = min(token_count(split, "ephemeral_1h_input_tokens"), written)
        # Anthropic counts cache reads and cache writes apart from input_tokens; Loom's input is
        # the whole prompt, of which `cached` and the writes are billed at their own rates.
        prompt = token_count(usage, "input_tokens") + cached + written
        return LLMResponse(
            text=text, input_tokens=prompt, output_tokens=token_count(usage, "output_tokens"),
            cached_tokens=cached, cache_write_tokens=written - written_1h,
            cache_write_1h_tokens=written_1h, model=data.get("model") or request.model,
            finish_reason=data.get("stop_reason"), latency_s=latency, raw=data,
        )

    async def aclose(self) -> None:
        await self._pools.aclose()
