"""Learning from a refusal: a 400 that names a parameter is adapted to once, and remembered.

Model data is never complete (a model released next month, a proxy alias, an Azure deployment
name). When a server refuses a request because of something Loom chose to send — a sampling
parameter, the name of the token limit, a structured-output mode — the provider drops or
changes that one thing and sends the request again. What it learned holds for that model at
that endpoint for the rest of the run, is reported as a warning, and is kept in the store
(`model_adaptations`) so that later runs start with it.

What the pipeline itself asks for in `transform.params` is never dropped: a refused
`service_tier` or `reasoning_effort` is the user's to change, and fails the call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from core.errors import ProviderError
from core.llm.base import StructuredOutput

# Parameters Loom sends on its own account, which a model may refuse and still answer without.
DROPPABLE = ("temperature", "top_p", "top_k", "seed")
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")
# Words in a refusal that point at the structured-output part of a request.
_STRUCTURED_WORDS = ("response_format", "json_schema", "json_object", "output_config",
                     "output_format", "tool_choice", "tools", "structured output", "grammar")
# Servers that fail a mode they do not know with a 500 (llama.cpp's server does, for
# json_schema) are adapted to only when the message names the structured-output part.
_ADAPTABLE_STATUSES = frozenset({400, 404, 422})


class AdaptationKind(StrEnum):
    DROP = "drop"  # stop sending a parameter
    TOKEN_LIMIT = "token_limit"  # send the token limit under another name
    STRUCTURED = "structured"  # use a weaker structured-output mode


@dataclass(frozen=True, slots=True)
class Adaptation:
    kind: AdaptationKind
    value: str  # the parameter dropped, the token-limit name, or the structured-output mode
    reason: str = ""  # the server's words

    def describe(self, model: str) -> str:
        if self.kind is AdaptationKind.DROP:
            what = f"{model} refused {self.value}: it is no longer sent to it"
        elif self.kind is AdaptationKind.TOKEN_LIMIT:
            what = f"{model} takes its token limit as {self.value}"
        else:
            what = f"{model} refused the structured-output mode: now using {self.value}"
        return f"{what} (the server said: {self.reason})" if self.reason else what


@dataclass
class ModelAdaptations:
    """What one model at one endpoint has been found to refuse."""

    dropped: set[str] = field(default_factory=set)
    token_limit: str | None = None
    structured: StructuredOutput | None = None

    def apply(self, adaptation: Adaptation) -> None:
        if adaptation.kind is AdaptationKind.DROP:
            self.dropped.add(adaptation.value)
        elif adaptation.kind is AdaptationKind.TOKEN_LIMIT:
            self.token_limit = adaptation.value
        else:
            self.structured = StructuredOutput(adaptation.value)


Key = tuple[str, str, str]  # provider, base URL ("" when none), model
Loader = Callable[[], Awaitable[list[tuple[Key, Adaptation]]]]
Saver = Callable[[Key, Adaptation], Awaitable[None]]


class Adaptations:
    """The run's knowledge of refusals, shared by every provider of the run."""

    def __init__(self, *, load: Loader | None = None, save: Saver | None = None,
                 on_learned: Callable[[str], None] | None = None) -> None:
        self._load = load
        self._save = save
        self._on_learned = on_learned
        self._models: dict[Key, ModelAdaptations] = {}
        self._loaded = load is None
        self._lock = asyncio.Lock()
        self.learned: list[tuple[Key, Adaptation]] = []  # this run's, for its summary
        self._noted: set[str] = set()

    def note(self, message: str) -> None:
        """Say once that a request was shaped from what is known of a model."""
        if message in self._noted:
            return
        self._noted.add(message)
        if self._on_learned is not None:
            self._on_learned(message)

    async def ready(self) -> None:
        """Read what earlier runs learned, once; a store that cannot answer costs nothing."""
        if self._loaded:
            return
        async with self._lock:
            if self._loaded or self._load is None:
                return
            try:
                remembered = await self._load()
            except Exception:  # noqa: BLE001 - adapting again costs one refused call
                remembered = []
            for key, adaptation in remembered:
                self.for_model(*key).apply(adaptation)
            self._loaded = True

    def for_model(self, provider: str, base_url: str | None, model: str) -> ModelAdaptations:
        key = (provider, base_url or "", model)
        found = self._models.get(key)
        if found is None:
            found = self._models[key] = ModelAdaptations()
        return found

    async def learn(self, provider: str, base_url: str | None, model: str, error: ProviderError,
                    body: dict[str, Any], structured: StructuredOutput | None) -> Adaptation | None:
        """The adaptation a refusal calls for, applied and remembered; None when there is none."""
        adaptation = refusal_adaptation(error, body, structured)
        if adaptation is None:
            return None
        key = (provider, base_url or "", model)
        self.for_model(*key).apply(adaptation)
        self.learned.append((key, adaptation))
        if self._on_learned is not None:
            self._on_learned(adaptation.describe(model))
        if self._save is not None:
            try:
                await self._save(key, adaptation)
            except Exception:  # noqa: BLE001 - the run goes on; the next one learns it again
                pass
        return adaptation


def refusal_adaptation(error: ProviderError, body: dict[str, Any],
                       structured: StructuredOutput | None) -> Adaptation | None:
    """What to change so that the server takes the request, judged from its refusal."""
    status = error.status or 0
    text = " ".join(filter(None, (error.message, error.param or ""))).lower()
    reason = _reason(error)
    names_structure = any(word in text for word in _STRUCTURED_WORDS)
    if structured is not None and structured is not StructuredOutput.PROMPT and names_structure \
            and (status in _ADAPTABLE_STATUSES or status >= 500):
        weaker = structured.weaker
        if weaker is not None:
            return Adaptation(AdaptationKind.STRUCTURED, weaker.value, reason)
    if status not in _ADAPTABLE_STATUSES:
        return None
    for sent, other in (TOKEN_LIMITS, TOKEN_LIMITS[::-1]):
        if sent in body and _names(text, sent):
            return Adaptation(AdaptationKind.TOKEN_LIMIT, other, reason)
    for name in DROPPABLE:
        if name in body and _names(text, name):
            return Adaptation(AdaptationKind.DROP, name, reason)
    return None


def _names(text: str, parameter: str) -> bool:
    return re.search(rf"(?<![a-z0-9_]){re.escape(parameter)}(?![a-z0-9_])", text) is not None


def _reason(error: ProviderError) -> str:
    # The part after "HTTP 400 from URL: ", which is the server's own words.
    message = error.message
    _, _, detail = message.partition(": HTTP ")
    detail = detail.split(": ", 1)[1] if ": " in detail else message
    return detail if len(detail) <= 160 else detail[:157] + "..."
