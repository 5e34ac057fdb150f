"""What the HTTP providers share in shaping a request for a model, and adapting it.

A provider builds its body from the request, the model's known capabilities
(`core.llm.capabilities`) and what the endpoint has refused before (`core.llm.adaptation`).
When the server refuses the body for something Loom chose to send, the provider learns that
and sends the request again, a few times at most.
"""

from __future__ import annotations

import abc
from typing import Any

from core.errors import ProviderError
from core.llm.adaptation import Adaptations, ModelAdaptations
from core.llm.base import LLMRequest, LLMResponse, MalformedUsage, Provider, StructuredOutput
from core.llm.capabilities import ModelCapabilities, lookup
from core.llm.transport import Exchange, exhausted_wait, reported_cost, user_agent

# A request can need a few changes (a sampling parameter, the token limit's name, the
# structured-output mode); past this the refusal is not about Loom's choices.
MAX_ADAPTATIONS = 4
SAMPLING = ("temperature", "top_p")
CACHE_CONTROL = {"type": "ephemeral"}


def cached_content(index: int, text: str, request: LLMRequest, cache: bool) -> Any:
    """A message's content with its static prefix marked for the provider's prompt cache
    (Anthropic's `cache_control`), or the text as it is."""
    prefix = request.cache_prefix
    if not cache or prefix is None or prefix.message != index or not 0 < prefix.chars < len(text):
        return text
    return [{"type": "text", "text": text[:prefix.chars], "cache_control": CACHE_CONTROL},
            {"type": "text", "text": text[prefix.chars:]}]


def system_is_static(request: LLMRequest) -> bool:
    """Whether the system prompt is the same for every record: the static prefix lies past it.
    Without a prefix nothing is known to be static."""
    prefix = request.cache_prefix
    if prefix is None:
        return False
    first_turn = next((i for i, m in enumerate(request.messages) if m.get("role") != "system"), 0)
    return prefix.message >= first_turn


class RequestShaper(Provider):
    vendors: tuple[str, ...] = ()  # whose model data applies
    url: str
    _exchange: Exchange

    def __init__(self, *, adaptations: Adaptations | None, headers: dict[str, str] | None,
                 structured_output: StructuredOutput | None) -> None:
        self.adaptations = adaptations if adaptations is not None else Adaptations()
        self.extra_headers = dict(headers or {})
        self.configured_structure = structured_output

    def request_headers(self, own: dict[str, str]) -> dict[str, str]:
        """Loom's headers, then the pipeline's (transform.headers), which win: an Azure
        `api-key`, an `OpenAI-Project`, a gateway's routing header."""
        merged = {"user-agent": user_agent(), **own}
        lowered = {name.lower(): value for name, value in self.extra_headers.items()}
        merged.update(lowered)
        return merged

    def capabilities(self, model: str) -> ModelCapabilities:
        return lookup(model, self.vendors)

    def learned(self, model: str) -> ModelAdaptations:
        return self.adaptations.for_model(self.name, self.base_url, model)

    def add_sampling(self, body: dict[str, Any], request: LLMRequest, caps: ModelCapabilities,
                     learned: ModelAdaptations, *, names: tuple[str, ...] = SAMPLING) -> None:
        """The sampling parameters the pipeline set, unless the model takes none."""
        for name in names:
            value = getattr(request, name)
            if value is None or name in learned.dropped:
                continue
            if caps.sampling is False:
                self.adaptations.note(f"{request.model}: {name} not sent (the model takes no "
                                      f"sampling parameters; its default is used)")
                continue
            body[name] = value

    def structured_mode(self, request: LLMRequest) -> StructuredOutput | None:
        if request.output_schema is None and not request.json_mode:
            return None
        learned = self.learned(request.model).structured
        if learned is not None:
            return learned
        return request.structured_output or self.configured_structure or self.default_structured(request)

    @abc.abstractmethod
    def default_structured(self, request: LLMRequest) -> StructuredOutput: ...

    @abc.abstractmethod
    def build_body(self, request: LLMRequest) -> tuple[dict[str, Any], StructuredOutput | None]:
        """The body to send, and the structured-output mode it uses."""

    @abc.abstractmethod
    def parse(self, data: dict[str, Any], request: LLMRequest, latency: float) -> LLMResponse:
        """The answer in a successful body (raises MalformedUsage, ProviderError)."""

    async def send(self, body: dict[str, Any], request: LLMRequest) -> LLMResponse:
        reply = await self._exchange.post_json(self.url, body, model=request.model)
        try:
            response = self.parse(reply.body, request, reply.latency_s)
        except MalformedUsage as exc:
            # A bill that cannot be read is no answer to pay for: worth another try, like a
            # body that does not parse.
            raise self._exchange.malformed(request.model, self.url,
                                           f"a usable usage block ({exc})") from None
        response.reported_cost_usd = reported_cost(reply.headers)
        response.limit_reset_s = exhausted_wait(reply.headers)
        return response

    async def complete(self, request: LLMRequest) -> LLMResponse:
        await self.adaptations.ready()
        for attempt in range(MAX_ADAPTATIONS + 1):
            body, mode = self.build_body(request)
            try:
                response = await self.send(body, request)
            except ProviderError as error:
                if attempt == MAX_ADAPTATIONS or await self.adaptations.learn(
                        self.name, self.base_url, request.model, error, body, mode) is None:
                    raise
                continue
            response.structured_output = mode
            return response
        raise AssertionError("unreachable")
