"""What an LLM provider is: one request in, one response out, typed failures.

A provider makes exactly one HTTP exchange per `complete` call and raises `ProviderError`
(with `retryable`, `status` and `retry_after`) when it fails; retries, caching, rate limits and
pricing live above it in `core.llm.client`, so every provider gets them the same way.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class LLMRequest:
    model: str
    messages: list[dict[str, str]]
    temperature: float = 0.0
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    output_schema: dict[str, Any] | None = None
    json_mode: bool = False  # JSON without a schema
    stage: str = "transform"  # what the call is for, for accounting: transform | evaluate

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the answer (not where it is sent): the cassette key."""
        return {
            "model": self.model, "messages": self.messages, "temperature": self.temperature,
            "max_tokens": self.max_tokens, "top_p": self.top_p, "seed": self.seed,
            "output_schema": self.output_schema, "json_mode": self.json_mode,
        }

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
    cached_tokens: int = 0  # prompt tokens the provider served from its own prompt cache
    model: str | None = None  # as the provider reported it
    finish_reason: str | None = None
    latency_s: float = 0.0
    raw: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cached_tokens": self.cached_tokens,
                "model": self.model, "finish_reason": self.finish_reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMResponse":
        return cls(text=data["text"], input_tokens=int(data.get("input_tokens") or 0),
                   output_tokens=int(data.get("output_tokens") or 0),
                   cached_tokens=int(data.get("cached_tokens") or 0), model=data.get("model"),
                   finish_reason=data.get("finish_reason"))


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
