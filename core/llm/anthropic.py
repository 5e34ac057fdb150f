"""Anthropic's Messages API.

Structured output, strongest first: native `output_config.format` json_schema (the schema
reshaped as the API takes it, `core.llm.strict_schema`), else a forced tool whose input schema is
the schema and whose input is the answer, else the prompt alone. Sampling parameters only when
the pipeline sets them and the model takes them (current models take none).

Prompt caching: the static prefix of the prompt (the system prompt and the prompt up to its
first record field: the context, typically) is marked with `cache_control`, so that every
record after the first reads it from the cache. `transform.prompt_cache: false` turns it off.
"""

from __future__ import annotations

import json
import os
from typing import Any

from core.errors import ProviderError, SecretError
from core.llm import strict_schema
from core.llm.adaptation import Adaptations
from core.llm.base import LLMRequest, LLMResponse, StructuredOutput, token_count
from core.llm.shaping import CACHE_CONTROL, RequestShaper, cached_content, system_is_static
from core.llm.transport import ConnectionPools, Exchange, HttpTransport, checked_base_url, endpoint
from core.secrets_mask import SecretMasker, header_secrets

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# The API requires max_tokens; a pipeline that sets none gets room for any ordinary answer.
DEFAULT_MAX_TOKENS = 4096
TOOL_NAME = "output"


class AnthropicProvider(RequestShaper):
    name = "anthropic"
    vendors = ("anthropic",)

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 60.0, concurrency: int = 8,
                 headers: dict[str, str] | None = None,
                 structured_output: StructuredOutput | None = None,
                 adaptations: Adaptations | None = None,
                 masker: SecretMasker | None = None,
                 http_transport: HttpTransport | None = None) -> None:
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        if not api_key:
            raise SecretError("provider anthropic needs an API key: set ANTHROPIC_API_KEY "
                              "(or transform.api_key: ${ANTHROPIC_API_KEY})")
        self.base_url = checked_base_url(
            base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL, self.name)
        self.url = endpoint(self.base_url, "v1/messages")
        self.timeout_s = timeout_s
        super().__init__(adaptations=adaptations, headers=headers, structured_output=structured_output)
        own = {"accept": "application/json", "x-api-key": api_key, "anthropic-version": API_VERSION}
        self._pools = ConnectionPools(concurrency=concurrency, timeout_s=timeout_s,
                                      headers=self.request_headers(own), url=self.url,
                                      transport=http_transport)
        self._exchange = Exchange(provider=self.name, pools=self._pools, timeout_s=timeout_s,
                                  secret=api_key, secrets=header_secrets(self.extra_headers),
                                  masker=masker)

    # ------------------------------------------------------------ the body

    def default_structured(self, request: LLMRequest) -> StructuredOutput:
        caps = self.capabilities(request.model)
        if request.output_schema is not None and caps.native_schema is not False:
            return StructuredOutput.JSON_SCHEMA  # what current models take; older ones adapt
        if caps.forced_tool is not False:
            return StructuredOutput.TOOL
        return StructuredOutput.PROMPT

    def build_body(self, request: LLMRequest) -> tuple[dict[str, Any], StructuredOutput | None]:
        caps = self.capabilities(request.model)
        learned = self.learned(request.model)
        system = [m["content"] for m in request.messages if m.get("role") == "system"]
        turns = [(index, m) for index, m in enumerate(request.messages) if m.get("role") != "system"]
        cache = request.prompt_cache and caps.prompt_caching is not False
        messages = [{"role": m["role"], "content": cached_content(index, m["content"], request, cache)}
                    for index, m in turns]
        body: dict[str, Any] = {"model": request.model, "messages": messages,
                                "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS}
        self.add_sampling(body, request, caps, learned)
        # The Messages API has no seed: determinism comes from Loom's cache.
        if system:
            block: dict[str, Any] = {"type": "text", "text": "\n\n".join(system)}
            if cache and system_is_static(request):
                block["cache_control"] = CACHE_CONTROL
            body["system"] = [block]
        mode = self.structured_mode(request)
        if mode is StructuredOutput.JSON_SCHEMA and request.output_schema is not None:
            native = strict_schema.for_anthropic(request.output_schema)
            if native is None:
                mode = StructuredOutput.TOOL if caps.forced_tool is not False else StructuredOutput.PROMPT
            else:
                body["output_config"] = {"format": {"type": "json_schema", "schema": native}}
        if mode in (StructuredOutput.TOOL, StructuredOutput.JSON_OBJECT,
                    StructuredOutput.JSON_OBJECT_SCHEMA) or (
                mode is StructuredOutput.JSON_SCHEMA and request.output_schema is None):
            mode = StructuredOutput.TOOL
            schema = request.output_schema or {"type": "object"}
            body["tools"] = [{"name": TOOL_NAME, "description": "Return the answer.",
                              "input_schema": schema}]
            body["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        body.update(request.params)
        return body, mode

    # ------------------------------------------------------------ the exchange

    def parse(self, data: dict[str, Any], request: LLMRequest, latency: float) -> LLMResponse:
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self._exchange.malformed(request.model, self.url, "content")
        text: str | None = None
        for block in blocks:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                text = json.dumps(block.get("input"), ensure_ascii=False, allow_nan=False)
                break
        stop = data.get("stop_reason") if isinstance(data.get("stop_reason"), str) else None
        if text is None:
            parts = [b.get("text") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
            if not all(isinstance(p, str) for p in parts):
                raise self._exchange.malformed(request.model, self.url, "a text or tool_use block")
            if not parts:
                if stop == "refusal":
                    raise ProviderError(f"anthropic {request.model}: the model refused to answer",
                                        retryable=False, status=200)
                if stop != "max_tokens":  # cut off before any text: the transform says so
                    raise self._exchange.malformed(request.model, self.url, "a text or tool_use block")
            text = "".join(p for p in parts if isinstance(p, str))  # all are (checked above)
            if not text.strip() and stop not in ("max_tokens", "refusal"):
                # Text blocks with nothing in them are no answer: the endpoint's failure.
                raise self._exchange.malformed(request.model, self.url, "a text or tool_use block")
        usage = data["usage"] if isinstance(data.get("usage"), dict) else {}
        cached = token_count(usage, "cache_read_input_tokens")
        written = token_count(usage, "cache_creation_input_tokens")
        # cache_creation splits the writes by lifetime; without it every write is a 5-minute one.
        written_1h = min(token_count(usage.get("cache_creation"), "ephemeral_1h_input_tokens"), written)
        # Anthropic counts cache reads and cache writes apart from input_tokens; Loom's input is
        # the whole prompt, of which `cached` and the writes are billed at their own rates.
        prompt = token_count(usage, "input_tokens") + cached + written
        return LLMResponse(
            text=text, input_tokens=prompt, output_tokens=token_count(usage, "output_tokens"),
            cached_tokens=cached, cache_write_tokens=written - written_1h,
            cache_write_1h_tokens=written_1h,
            model=data.get("model") if isinstance(data.get("model"), str) else request.model,
            finish_reason=stop, latency_s=latency, raw=data,
        )

    async def aclose(self) -> None:
        await self._pools.aclose()
