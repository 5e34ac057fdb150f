"""OpenAI chat completions, and every server that speaks the same wire format.

`openai` is the official API: the key comes from the pipeline (already resolved) or
OPENAI_API_KEY, the base URL from the pipeline, OPENAI_BASE_URL or the default.
`openai_compatible` (vLLM, Ollama, llama.cpp server, LiteLLM...) needs a base URL and takes a
key only when the pipeline gives one: the user's OpenAI key is never sent to another server
unless they say so.
"""

from __future__ import annotations

import os
import re
from typing import Any

from core.errors import PipelineError, ProviderError, SecretError
from core.llm.base import LLMRequest, LLMResponse, Provider, MalformedUsage, token_count
from core.llm.transport import ConnectionPools, Exchange, checked_base_url, reported_cost

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Reasoning models reject `max_tokens` (they take `max_completion_tokens`) and any temperature
# or top_p but the default. The request's values still key the cache and the cassette.
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)(\b|[-.])")


class OpenAIProvider(Provider):
    def __init__(self, *, name: str = "openai", api_key: str | None = None,
                 base_url: str | None = None, timeout_s: float = 60.0, concurrency: int = 8) -> None:
        if name not in ("openai", "openai_compatible"):
            raise ValueError(f"OpenAIProvider serves openai or openai_compatible, not {name!r}")
        self.name = name
        if name == "openai":
            api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
            if not api_key:
                raise SecretError("provider openai needs an API key: set OPENAI_API_KEY "
                                  "(or transform.api_key: ${OPENAI_API_KEY})")
            base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        elif not base_url:
            raise PipelineError("provider openai_compatible needs base_url (e.g. http://localhost:8000/v1)",
                                key="transform.base_url")
        self.base_url = checked_base_url(base_url, name)
        self.url = f"{self.base_url}/chat/completions"
        self.timeout_s = timeout_s
        headers = {"accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._pools = ConnectionPools(concurrency=concurrency, timeout_s=timeout_s, headers=headers,
                                      url=self.url)
        self._exchange = Exchange(provider=name, pools=self._pools, timeout_s=timeout_s, secret=api_key)

    def build_body(self, request: LLMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        reasoning = bool(_REASONING_MODEL.match(request.model))
        if not reasoning:
            body["temperature"] = request.temperature
            if request.top_p is not None:
                body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body["max_completion_tokens" if reasoning else "max_tokens"] = request.max_tokens
        if request.seed is not None:
            body["seed"] = request.seed
        if request.output_schema is not None:
            # strict: false because strict mode rejects ordinary schemas (optional properties,
            # no additionalProperties: false); Loom validates the answer itself afterwards.
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": request.output_schema, "strict": False}}
        elif request.json_mode:
            body["response_format"] = {"type": "json_object"}
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
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise self._exchange.malformed(request.model, self.url, "choices[0].message") from None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            refusal = message.get("refusal") if isinstance(message, dict) else None
            if refusal:
                # A refusal is the model's answer to this prompt: asking again will not change it.
                raise ProviderError(f"{self.name} {request.model}: the model refused: "
                                    f"{' '.join(str(refusal).split())[:300]}", retryable=False, status=200)
            raise self._exchange.malformed(request.model, self.url, "message content")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        # OpenAI reports cache reads in prompt_tokens_details; gateways that translate from
        # Anthropic (LiteLLM) add Anthropic's cache_creation_input_tokens beside them.
        return LLMResponse(
            text=content,
            input_tokens=token_count(usage, "prompt_tokens"),
            output_tokens=token_count(usage, "completion_tokens"),
            cached_tokens=token_count(prompt_details, "cached_tokens"),
            cache_write_tokens=token_count(usage, "cache_creation_input_tokens"),
            reasoning_tokens=token_count(completion_details, "reasoning_tokens"),
            model=data.get("model") or request.model,
            finish_reason=choice.get("finish_reason"),
            latency_s=latency,
            raw=data,
        )

    async def aclose(self) -> None:
        await self._pools.aclose()
