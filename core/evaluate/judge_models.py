"""How LLM judges reach a model: the run's client, or a client of their own.

A judge that names no provider, base_url, api_key or cassette of its own asks the transform's
model (or its own `model`) through the run's `LLMClient`, sharing its cache, concurrency and
retries. One that names another provider or endpoint gets a client of its own, made with
`LLMClient.sibling` so that it caches, prices, retries and records exactly like the run's.
Judges that point at the same endpoint share one such client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import PipelineError
from core.llm.client import LLMClient
from core.llm.adaptation import Adaptations
from core.llm.factory import make_provider
from core.secrets_mask import SecretMasker
from core.prompts import PromptSet
from core.spec import JUDGE_SPECS, LoadedSpec


@dataclass
class JudgeModels:
    """What judges need from the run: its client, its (resolved) pipeline, its prompts.

    `resolved` is the pipeline with ${NAME} placeholders resolved: judges are built from the
    pipeline as written, and find their resolved twin (api_key, base_url) here by name.
    """

    run_client: LLMClient
    resolved: LoadedSpec
    prompts: PromptSet | None = None  # for pairwise against_prompt: the run's system and context
    schema: dict[str, Any] | None = None  # the transform's output schema, ditto
    adaptations: Adaptations | None = None  # what models refused, shared with the run
    masker: SecretMasker | None = None  # the run's: a judge's answers are masked like the run's
    _own: dict[tuple[Any, ...], LLMClient] = field(default_factory=dict)

    def client_for(self, spec: Any) -> tuple[LLMClient, str]:
        """The client and model a judge asks. Raises PipelineError (key relative to the judge)."""
        transform = self.resolved.spec.transform
        judge = self._resolved_twin(spec)
        provider = judge.provider or transform.provider
        inherits = provider == transform.provider
        base_url = judge.base_url or (transform.base_url if inherits else None)
        api_key = judge.api_key or (transform.api_key if inherits else None)
        cassette = judge.cassette or (transform.cassette if inherits else None)
        model = judge.model or transform.model
        endpoint = (provider, base_url, api_key, cassette)
        if endpoint == (transform.provider, transform.base_url, transform.api_key,
                        transform.cassette):
            return self.run_client, model
        client = self._own.get(endpoint)
        if client is None:
            settings = transform.model_copy(update={
                "provider": provider, "base_url": base_url, "api_key": api_key,
                "cassette": cassette, "model": model})
            try:
                made = make_provider(settings, self.resolved, api_key=api_key, base_url=base_url,
                                     adaptations=self.adaptations, masker=self.masker)
            except PipelineError as exc:
                # The provider names the transform's key; here it is the judge's.
                key = exc.key.rsplit(".", 1)[-1] if exc.key else None
                raise PipelineError(exc.detail, key=key) from None
            client = self.run_client.sibling(made)
            self._own[endpoint] = client
        return client, model

    def _resolved_twin(self, spec: Any) -> Any:
        for candidate in self.resolved.spec.evaluate.evaluators:
            if isinstance(candidate, JUDGE_SPECS) and candidate.label == spec.label:
                return candidate
        return spec  # built from a pipeline other than the run's (tests): use it as given

    async def aclose(self) -> None:
        clients, self._own = list(self._own.values()), {}
        for client in clients:
            await client.aclose()
