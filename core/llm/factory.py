"""Which provider a pipeline's transform: block asks for, built and ready to call."""

from __future__ import annotations

from core.llm.adaptation import Adaptations
from core.llm.anthropic import AnthropicProvider
from core.llm.base import Provider, StructuredOutput
from core.llm.openai import OpenAIProvider
from core.llm.replay import ReplayProvider
from core.llm.transport import HttpTransport
from core.secrets_mask import SecretMasker
from core.spec import LoadedSpec, TransformSpec


def make_provider(spec: TransformSpec, loaded: LoadedSpec, *, api_key: str | None,
                  base_url: str | None, adaptations: Adaptations | None = None,
                  masker: SecretMasker | None = None) -> Provider:
    """`api_key` and `base_url` are the pipeline's values with ${NAME} already resolved.

    Without them, a literal value written in the pipeline is used; a placeholder that reached
    here unresolved is not (it would be sent as the key). Providers then fall back to their
    environment variables (OPENAI_API_KEY, ANTHROPIC_BASE_URL, ...). `adaptations`: what the
    run knows of refusals (shared by the run's providers, remembered in the store). `masker`:
    the run's (its resolver's), so answers are masked of every secret the run knows.
    """
    api_key = api_key if api_key is not None else _literal(spec.api_key)
    base_url = base_url if base_url is not None else _literal(spec.base_url)
    if spec.provider == "replay":
        assert spec.cassette is not None  # the spec's validator requires it
        return ReplayProvider(loaded.resolve(spec.cassette))
    headers = {name: value for name, value in spec.headers.items() if "${" not in value}
    structured = StructuredOutput(spec.structured_output) if spec.structured_output else None
    transport = HttpTransport(spec.http_transport) if spec.http_transport else None
    if spec.provider == "anthropic":
        return AnthropicProvider(api_key=api_key, base_url=base_url, timeout_s=spec.timeout_s,
                                 concurrency=spec.concurrency, headers=headers,
                                 structured_output=structured, adaptations=adaptations,
                                 masker=masker, http_transport=transport)
    return OpenAIProvider(name=spec.provider, api_key=api_key, base_url=base_url,
                          timeout_s=spec.timeout_s, concurrency=spec.concurrency, headers=headers,
                          structured_output=structured, adaptations=adaptations,
                          masker=masker, http_transport=transport)


def _literal(value: str | None) -> str | None:
    if value is None or "${" in value:
        return None
    return value or None
