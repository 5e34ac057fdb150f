"""What an LLM provider is: one request in, one response out, typed failures.

A provider makes exactly one HTTP exchange per `complete` call and raises `ProviderError`
(with `retryable`, `status` and `retry_after`) when it fails; retries, caching, rate limits and
pricing live above it in `core.llm.client`, so every provider gets them the same way.
A provider calls the `request_sent` hook, when one is set, as its request starts going out.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


# Set by the client around one call (core.llm.client): a provider calls it once the connection
# is open and the request's first bytes are about to be written to it, the moment a call is
# made (the HTTP providers through their transport: core.llm.transport). A call still
# connecting when the process dies never reached the server and is not counted as made.
request_sent: ContextVar[Callable[[], None] | None] = ContextVar("loom_request_sent",
                                                                 default=None)


class StructuredOutput(StrEnum):
    """How a request asks for JSON. Loom validates the answer itself whichever is used."""

    JSON_SCHEMA = "json_schema"  # the vendor's schema-constrained output (OpenAI strict, Anthropic output_config)
    JSON_OBJECT_SCHEMA = "json_object_schema"  # {"type": "json_object", "schema": ...} (llama.cpp server)
    JSON_OBJECT = "json_object"  # JSON mode without a schema
    TOOL = "tool"  # a forced tool whose input schema is the schema
    PROMPT = "prompt"  # nothing in the request: the prompt asks for JSON

    @property
    def weaker(self) -> "StructuredOutput | None":
        """What to fall back to when a server refuses this mode."""
        return _WEAKER[self]


_WEAKER: dict[StructuredOutput, StructuredOutput | None] = {
    StructuredOutput.JSON_SCHEMA: StructuredOutput.JSON_OBJECT_SCHEMA,
    StructuredOutput.JSON_OBJECT_SCHEMA: StructuredOutput.JSON_OBJECT,
    StructuredOutput.JSON_OBJECT: StructuredOutput.PROMPT,
    StructuredOutput.TOOL: StructuredOutput.PROMPT,
    StructuredOutput.PROMPT: None,
}


@dataclass(frozen=True, slots=True)
class CachePrefix:
    """The part of a message that is the same for every record (the prompt up to its first
    record field): where a provider that caches prompts on request puts its breakpoint."""

    message: int  # index into messages
    chars: int  # of that message's content


@dataclass(slots=True)
class LLMRequest:
    model: str
    messages: list[dict[str, str]]
    # Sampling parameters are sent only when set: current reasoning models refuse them.
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    output_schema: dict[str, Any] | None = None
    json_mode: bool = False  # JSON without a schema
    stage: str = "transform"  # what the call is for, for accounting: transform | evaluate
    # Provider options merged into the body as given (reasoning_effort, service_tier, ...).
    params: dict[str, Any] = field(default_factory=dict)
    # None: the provider's strongest mode for the model (see the providers).
    structured_output: StructuredOutput | None = None
    # Where the static prefix ends, for providers that cache prompts on request (Anthropic).
    cache_prefix: CachePrefix | None = None
    prompt_cache: bool = True

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the answer (not where it is sent): the cassette key.

        Options added since the first cassettes enter only when set, so that a request that
        uses none of them keeps its key."""
        fingerprint: dict[str, Any] = {
            "model": self.model, "messages": self.messages, "temperature": self.temperature,
            "max_tokens": self.max_tokens, "top_p": self.top_p, "seed": self.seed,
            "output_schema": self.output_schema, "json_mode": self.json_mode,
        }
        if self.params:
            fingerprint["params"] = self.params
        if self.structured_output is not None:
            fingerprint["structured_output"] = self.structured_output.value
        return fingerprint

    def key(self, *scope: Any) -> str:
        """sha256 of the fingerprint plus `scope` (provider, base URL for the response cache)."""
        payload = json.dumps([list(scope), self.fingerprint()], sort_keys=True,
                             ensure_ascii=False, separators=(",", ":"), default=str)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class LLMResponse:
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    # Of input_tokens: read from the provider's own prompt cache (billed at its cache-read
    # rate), and written to it (Anthropic bills writes above the input rate: 1.25x for the
    # 5-minute cache, 2x for the 1-hour one).
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    # Of output_tokens: spent on reasoning before the answer (billed as output).
    reasoning_tokens: int = 0
    model: str | None = None  # as the provider reported it
    finish_reason: str | None = None
    latency_s: float = 0.0
    # What a gateway said the call cost (LiteLLM's x-litellm-response-cost), when it said.
    reported_cost_usd: float | None = None
    # Seconds until a rate limit the answer says is used up resets (x-ratelimit-remaining-* 0).
    limit_reset_s: float | None = None
    # How the request asked for JSON (None: it did not), so that the answer is read the same way.
    structured_output: "StructuredOutput | None" = None
    raw: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cached_tokens": self.cached_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "cache_write_1h_tokens": self.cache_write_1h_tokens,
                "reasoning_tokens": self.reasoning_tokens, "model": self.model,
                "finish_reason": self.finish_reason, "reported_cost_usd": self.reported_cost_usd}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMResponse":
        reported = data.get("reported_cost_usd")
        return cls(text=data["text"], input_tokens=int(data.get("input_tokens") or 0),
                   output_tokens=int(data.get("output_tokens") or 0),
                   cached_tokens=int(data.get("cached_tokens") or 0),
                   cache_write_tokens=int(data.get("cache_write_tokens") or 0),
                   cache_write_1h_tokens=int(data.get("cache_write_1h_tokens") or 0),
                   reasoning_tokens=int(data.get("reasoning_tokens") or 0),
                   model=data.get("model"), finish_reason=data.get("finish_reason"),
                   reported_cost_usd=float(reported) if isinstance(reported, (int, float)) else None)


# Past any real prompt or answer: a count above it is a broken usage block, not a bill.
MAX_TOKEN_COUNT = 100_000_000


def token_count(usage: Any, key: str) -> int:
    """A usage counter as a non-negative int; 0 when absent. A value that is not a count
    (text, a list, a negative number, NaN, 10**23) raises MalformedUsage."""
    if not isinstance(usage, dict):
        return 0
    value = usage.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedUsage(f"usage.{key} is not a number: {str(value)[:40]!r}")
    if isinstance(value, float) and not value.is_integer():
        raise MalformedUsage(f"usage.{key} is not a whole number: {value!r}")
    if not 0 <= value <= MAX_TOKEN_COUNT:
        raise MalformedUsage(f"usage.{key} is out of range: {str(value)[:40]}")
    return int(value)


class MalformedUsage(ValueError):
    """The provider's usage block cannot be trusted as a bill."""


class Provider(abc.ABC):
    """One kind of LLM endpoint."""

    name: str = "provider"
    base_url: str | None = None

    @abc.abstractmethod
    async def complete(self, request: LLMRequest) -> LLMResponse:
        """One exchange. Raises ProviderError; `retryable` says whether trying again may help."""

    async def aclose(self) -> None:
        """Close connection pools."""


class ResponseCache(Protocol):
    """Where the client keeps answers it has already paid for (the store's llm_cache table)."""

    async def cache_get(self, key: str) -> dict[str, Any] | None: ...

    async def cache_put(self, key: str, value: dict[str, Any], *, provider: str, model: str,
                        ttl_s: float | None = None) -> None: ...
