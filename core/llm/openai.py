"""OpenAI chat completions, and every server that speaks the same wire format.

`openai` is the official API: the key comes from the pipeline (already resolved) or
OPENAI_API_KEY, the base URL from the pipeline, OPENAI_BASE_URL or the default.
`openai_compatible` (vLLM, Ollama, llama.cpp server, LiteLLM, Azure...) needs a base URL and
takes a key only when the pipeline gives one: the user's OpenAI key is never sent to another
server unless they say so.

What the body holds is decided per model (`core.llm.shaping`): sampling parameters only when
the pipeline sets them and the model takes them, the token limit under the name the model
takes, the strongest structured-output mode the endpoint accepts.
"""

from __future__ import annotations

import os
from typing import Any

from core.errors import PipelineError, ProviderError, SecretError
from core.llm import strict_schema
from core.llm.adaptation import Adaptations
from core.llm.base import LLMRequest, LLMResponse, StructuredOutput, token_count
from core.llm.capabilities import UNKNOWN, lookup
from core.llm.shaping import CACHE_CONTROL, RequestShaper, cached_content, system_is_static
from core.llm.transport import ConnectionPools, Exchange, HttpTransport, checked_base_url, endpoint
from core.secrets_mask import SecretMasker, header_secrets

DEFAULT_BASE_URL = "https://api.openai.com/v1"
TOOL_NAME = "output"


class OpenAIProvider(RequestShaper):
    vendors: tuple[str, ...] = ("openai", "anthropic")  # a gateway may serve either under its own name

    def __init__(self, *, name: str = "openai", api_key: str | None = None,
                 base_url: str | None = None, timeout_s: float = 60.0, concurrency: int = 8,
                 headers: dict[str, str] | None = None,
                 structured_output: StructuredOutput | None = None,
                 adaptations: Adaptations | None = None,
                 masker: SecretMasker | None = None,
                 http_transport: HttpTransport | None = None) -> None:
        if name not in ("openai", "openai_compatible"):
            raise ValueError(f"OpenAIProvider serves openai or openai_compatible, not {name!r}")
        self.name = name
        if name == "openai":
            self.vendors = ("openai",)
            api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
            if not api_key:
                raise SecretError("provider openai needs an API key: set OPENAI_API_KEY "
                                  "(or transform.api_key: ${OPENAI_API_KEY})")
            base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        elif not base_url:
            raise PipelineError("provider openai_compatible needs base_url (e.g. http://localhost:8000/v1)",
                                key="transform.base_url")
        self.base_url = checked_base_url(base_url, name)
        self.url = endpoint(self.base_url, "chat/completions")
        self.timeout_s = timeout_s
        sent = {"accept": "application/json"}
        if api_key:
            sent["authorization"] = f"Bearer {api_key}"
        super().__init__(adaptations=adaptations, headers=headers, structured_output=structured_output)
        self._pools = ConnectionPools(concurrency=concurrency, timeout_s=timeout_s,
                                      headers=self.request_headers(sent), url=self.url,
                                      transport=http_transport)
        self._exchange = Exchange(provider=name, pools=self._pools, timeout_s=timeout_s,
                                  secret=api_key, secrets=header_secrets(self.extra_headers),
                                  masker=masker)

    # ------------------------------------------------------------ the body

    def default_structured(self, request: LLMRequest) -> StructuredOutput:
        if request.output_schema is None:
            return StructuredOutput.JSON_OBJECT
        return StructuredOutput.JSON_SCHEMA

    def build_body(self, request: LLMRequest) -> tuple[dict[str, Any], StructuredOutput | None]:
        model = request.model
        caps = self.capabilities(model)
        learned = self.learned(model)
        body: dict[str, Any] = {"model": model, "messages": self._messages(request)}
        self.add_sampling(body, request, caps, learned)
        if request.seed is not None and "seed" not in learned.dropped:
            body["seed"] = request.seed
        if request.max_tokens is not None:
            # The official API takes max_completion_tokens for every current model (reasoning
            # models take nothing else); other servers know max_tokens best.
            default = "max_completion_tokens" if self.name == "openai" or caps.reasoning \
                else "max_tokens"
            body[learned.token_limit or default] = request.max_tokens
        mode = self.structured_mode(request)
        if mode is not None:
            self._add_structure(body, request, mode)
        body.update(request.params)
        return body, mode

    def _messages(self, request: LLMRequest) -> list[dict[str, Any]]:
        """The messages, with the static prefix marked for the prompt cache when a gateway
        serves an Anthropic model (LiteLLM passes `cache_control` blocks through); OpenAI and
        the servers it is modelled on cache prefixes on their own."""
        if self.name != "openai_compatible" or not request.prompt_cache or request.cache_prefix is None \
                or lookup(request.model, ("anthropic",)) is UNKNOWN:
            return request.messages
        static_system = system_is_static(request)
        shaped: list[dict[str, Any]] = []
        for index, message in enumerate(request.messages):
            if message.get("role") == "system" and static_system:
                shaped.append({"role": "system", "content": [
                    {"type": "text", "text": message["content"], "cache_control": CACHE_CONTROL}]})
            else:
                shaped.append({**message, "content": cached_content(index, message["content"], request, True)})
        return shaped

    def _add_structure(self, body: dict[str, Any], request: LLMRequest, mode: StructuredOutput) -> None:
        schema = request.output_schema
        if mode is StructuredOutput.JSON_SCHEMA and schema is not None:
            strict = strict_schema.for_openai(schema)
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": TOOL_NAME, "schema": strict if strict is not None else schema,
                "strict": strict is not None}}
        elif mode is StructuredOutput.JSON_OBJECT_SCHEMA and schema is not None:
            body["response_format"] = {"type": "json_object", "schema": schema}
        elif mode in (StructuredOutput.JSON_OBJECT, StructuredOutput.JSON_SCHEMA,
                      StructuredOutput.JSON_OBJECT_SCHEMA):
            body["response_format"] = {"type": "json_object"}
        elif mode is StructuredOutput.TOOL:
            parameters = schema if schema is not None else {"type": "object"}
            body["tools"] = [{"type": "function", "function": {
                "name": TOOL_NAME, "description": "Return the answer.", "parameters": parameters}}]
            body["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}

    # ------------------------------------------------------------ the exchange

    def parse(self, data: dict[str, Any], request: LLMRequest, latency: float) -> LLMResponse:
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise self._exchange.malformed(request.model, self.url, "choices[0].message") from None
        if not isinstance(message, dict) or not isinstance(choice, dict):
            raise self._exchange.malformed(request.model, self.url, "choices[0].message")
        content = message.get("content")
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls and isinstance(calls[0], dict):
            arguments = (calls[0].get("function") or {}).get("arguments")
            if isinstance(arguments, str):
                content = arguments
        if isinstance(content, str) and not content.strip() and \
                choice.get("finish_reason") != "length" and not message.get("refusal"):
            # An empty answer that was not cut off is no answer: the endpoint's failure, tried
            # again and counted by the breaker, not a record to repair and quarantine.
            content = None
        if not isinstance(content, str):
            refusal = message.get("refusal")
            if refusal:
                # A refusal is the model's answer to this prompt: asking again will not change it.
                raise ProviderError(f"{self.name} {request.model}: the model refused: "
                                    f"{' '.join(str(refusal).split())[:300]}", retryable=False, status=200)
            if choice.get("finish_reason") == "length":
                content = ""  # cut off before any text: the transform names the truncation
            else:
                raise self._exchange.malformed(request.model, self.url, "message content")
        usage = data["usage"] if isinstance(data.get("usage"), dict) else {}
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
            model=data.get("model") if isinstance(data.get("model"), str) else request.model,
            finish_reason=_text_or_none(choice.get("finish_reason")),
            latency_s=latency,
            raw=data,
        )

    async def aclose(self) -> None:
        await self._pools.aclose()


def _text_or_none(value: Any) -> str | None:
    return value[:40] if isinstance(value, str) else None
