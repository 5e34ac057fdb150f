"""What happens to one record: render -> transform -> evaluate -> gate.

`RecordProcessor` is shared by the engine (whole runs) and the workbench (sample runs), so a
prompt edited in the TUI is judged exactly as a headless run would judge it. `Runtime` wires
a pipeline's prompts, model client and evaluators together.
"""

from __future__ import annotations

import asyncio

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import LoomConfig
from core.connectors.registry import literal_secrets
from core.credentials import SecretResolver
from core.errors import (BudgetExceeded, EvaluatorError, LoomError, ProviderError, SecretError,
                         SecurityError, TemplateError)
from core.evaluate.base import Evaluator
from core.evaluate.gates import apply_gate
from core.evaluate.judge_models import JudgeModels
from core.evaluate.registry import build_evaluators
from core.llm.budget import Budget
from core.llm.client import LLMClient
from core.llm.adaptation import Adaptations
from core.llm.answer_journal import AnswerJournal, record_scope
from core.llm.breaker import CircuitBreaker, CircuitOpen
from core.llm.failures import FailureClass, classify
from core.llm.factory import make_provider
from core.llm.pricing import Pricing, pipeline_prices
from core.llm.ratelimit import LimitsRegistry
from core.llm.tokens import TokenCounter
from core.llm.replay import CassetteRecorder
from core.prompt_cache import prefix_marker
from core.prompts import PromptSet, RenderStopped, load_prompts
from core.records import Outcome, Record, RecordResult, Stage
from core.spec import EvaluateSpec, LoadedSpec, PipelineSpec
from core.transform import Transformer, TransformFailed, load_output_schema

class FatalRunError(LoomError):
    """An error that stops the whole run (bad credentials, a template the sandbox refuses, a
    provider that keeps failing the same way)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fatal_cause(exc: BaseException) -> LoomError | None:
    """The error behind `exc` if it should stop the run rather than quarantine one record."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (SecurityError, SecretError, CircuitOpen)):
            return seen
        seen = seen.__cause__
    return None


def provider_cause(exc: BaseException, *, endpoint_answered: bool = True) -> ProviderError | None:
    """The provider failure behind `exc` when it is not the record's fault (the endpoint's, or
    the network's): the record was not processed, and is skipped rather than quarantined.

    Another 4xx is the record's own once the endpoint has answered other records; before that
    (`endpoint_answered` false) it is as likely the endpoint's (a gateway without its
    database), and the record waits for --resume rather than a person."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProviderError):
            failure = classify(seen)
            if failure is FailureClass.RECORD or (failure is FailureClass.REQUEST and endpoint_answered):
                return None
            return seen
        seen = seen.__cause__
    return None


def budget_cause(exc: BaseException) -> BudgetExceeded | None:
    """The budget refusal behind `exc`, if a call was refused for the budget."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BudgetExceeded):
            return seen
        seen = seen.__cause__
    return None


def request_cause(exc: BaseException) -> ProviderError | None:
    """The 4xx behind `exc` that may be the record's own or the endpoint's (FailureClass.REQUEST)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProviderError):
            return seen if classify(seen) is FailureClass.REQUEST else None
        seen = seen.__cause__
    return None


# The error_type of a record skipped because its provider failed (resumable).
PROVIDER_FAILURE = "ProviderFailure"


class RecordProcessor:
    def __init__(self, prompts: PromptSet, transformer: Transformer, evaluators: list[Evaluator],
                 evaluate_spec: EvaluateSpec) -> None:
        self.prompts = prompts
        self.transformer = transformer
        self.evaluators = evaluators
        self.evaluate_spec = evaluate_spec
        # record ordinal -> whether its quarantine stands: a record refused with a 4xx that the
        # next calls may show to be the endpoint's waits for them (CircuitBreaker.park).
        self.awaiting: dict[int, asyncio.Future[bool]] = {}

    @property
    def _endpoint_answered(self) -> bool:
        return self.transformer.client.breaker.successes > 0

    def _park(self, record: Record, exc: BaseException) -> None:
        cause = request_cause(exc)
        if cause is not None:
            verdict = self.transformer.client.breaker.park(cause)
            if verdict is not None:
                self.awaiting[record.ordinal] = verdict

    def _stop_if_fatal(self, exc: BaseException) -> None:
        cause = fatal_cause(exc)
        if cause is not None:
            raise FatalRunError(str(cause), exit_code=cause.exit_code if isinstance(
                cause, (SecretError, SecurityError)) else 1) from exc
        trip = self.transformer.client.breaker.trip
        if trip is not None:
            # This record's failure opened the breaker: the run stops here.
            raise FatalRunError(trip.message) from exc

    async def process(self, record: Record) -> RecordResult:
        """The record's fate before loading: outcome LOADED here means "passed the gate"."""
        # The calls made from here are this record's, in the run's answer journal: by id, not
        # position, so that a source read in another order on resume finds them.
        scope = record_scope.set(record.id)
        try:
            return await self._process(record)
        finally:
            record_scope.reset(scope)

    async def _process(self, record: Record) -> RecordResult:
        if record.extract_error is not None:
            return RecordResult(record, Outcome.QUARANTINED, Stage.EXTRACT, record.extract_error,
                                "ExtractError")
        try:
            messages = await self.prompts.render_async(record.data)
        except RenderStopped as exc:  # the run's stop, not the template's fault
            return RecordResult(record, Outcome.SKIPPED, None, str(exc), None)
        except SecurityError as exc:
            raise FatalRunError(str(exc), exit_code=2) from exc
        except TemplateError as exc:
            return RecordResult(record, Outcome.QUARANTINED, Stage.TRANSFORM, exc.detail,
                                "TemplateError")
        try:
            transformed = await self.transformer.run(messages)
        except TransformFailed as exc:
            budget = budget_cause(exc)
            if budget is not None:
                # Not the record's fault: it was never (fully) processed. What it cost so far
                # stays counted through `transform`.
                return RecordResult(record, Outcome.SKIPPED, Stage.TRANSFORM,
                                    f"not processed: {budget}", "BudgetExceeded",
                                    transform=exc.partial)
            self._stop_if_fatal(exc)
            failure = provider_cause(exc, endpoint_answered=self._endpoint_answered)
            if failure is not None:
                # The endpoint failed, not the record: it waits for --resume, unquarantined.
                return RecordResult(record, Outcome.SKIPPED, Stage.TRANSFORM,
                                    f"not processed: {failure}", PROVIDER_FAILURE,
                                    transform=exc.partial)
            self._park(record, exc)
            return RecordResult(record, Outcome.QUARANTINED, Stage.TRANSFORM, str(exc),
                                exc.error_type, transform=exc.partial)
        scores = []
        for evaluator in self.evaluators:
            try:
                scores.append(await evaluator.score(record.data, transformed.output))
            except EvaluatorError as exc:
                failed = getattr(exc, "score", None)  # a judge's calls and reply: still counted
                budget = budget_cause(exc)
                if budget is not None:
                    return RecordResult(record, Outcome.SKIPPED, Stage.EVALUATE,
                                        f"not processed: {budget}", "BudgetExceeded",
                                        transform=transformed,
                                        scores=scores + ([failed] if failed is not None else []))
                self._stop_if_fatal(exc)
                failure = provider_cause(exc, endpoint_answered=self._endpoint_answered)
                if failure is not None:
                    return RecordResult(record, Outcome.SKIPPED, Stage.EVALUATE,
                                        f"not processed: {evaluator.name}: {failure}",
                                        PROVIDER_FAILURE, transform=transformed,
                                        scores=scores + ([failed] if failed is not None else []))
                if failed is not None:
                    scores.append(failed)
                self._park(record, exc)
                return RecordResult(record, Outcome.QUARANTINED, Stage.EVALUATE,
                                    f"{evaluator.name}: {exc}", type(exc).__name__,
                                    transform=transformed, scores=scores)
        verdict = apply_gate(scores, self.evaluate_spec)
        if not verdict.passed:
            return RecordResult(record, Outcome.QUARANTINED, Stage.EVALUATE, verdict.reason,
                                "QualityGate", transform=transformed, scores=scores,
                                verdict=verdict)
        return RecordResult(record, Outcome.LOADED, transform=transformed, scores=scores,
                            verdict=verdict)


def remembered_adaptations(store: Any, on_warning: Callable[[str], None]) -> Adaptations:
    """The run's record of what models refused, read from and written to the store (when the
    run has one: a sample run in the workbench may not)."""
    load = getattr(store, "load_adaptations", None)
    save = getattr(store, "save_adaptation", None)
    return Adaptations(load=load, save=save, on_learned=on_warning)


def resolve_secrets(loaded: LoadedSpec, resolver: SecretResolver) -> LoadedSpec:
    """The pipeline with every ${NAME} resolved, for making connections. `raw` stays as written,
    so what is stored and shown keeps the placeholders."""
    if "${" not in repr(loaded.raw):
        return loaded
    raw = dict(loaded.raw)
    # Alert notification settings are resolved when there is an alert to post (core.monitoring):
    # a webhook secret missing on a developer's machine must not stop a run.
    monitoring = raw.get("monitoring")
    notify = monitoring.get("notify") if isinstance(monitoring, dict) else None
    if notify is not None and isinstance(monitoring, dict):
        raw["monitoring"] = {k: v for k, v in monitoring.items() if k != "notify"}
    resolved = resolver.resolve_tree(raw)
    if notify is not None:
        resolved["monitoring"]["notify"] = notify
    # In a connection URI a value lands in user:password@ percent-encoded, so that a password
    # holding "@" or "/" still connects where the pipeline says.
    for section, key in (("extract", "source"), ("load", "destination")):
        part = loaded.raw.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, str) and "${" in value:
            resolved[section][key] = resolver.resolve(value, where=f"{section}.{key}", url=True)
    spec = PipelineSpec.model_validate(resolved)
    return LoadedSpec(spec=spec, path=loaded.path, raw=loaded.raw)


_SPEC: Any = object()  # "as the pipeline says"


@dataclass
class Runtime:
    """A pipeline ready to process records."""

    loaded: LoadedSpec  # secrets resolved: never print or store this one's values
    prompts: PromptSet
    client: LLMClient
    processor: RecordProcessor
    schema: dict[str, Any] | None
    # Shared by every LLM call of the run (the transform's and, through the same limits and
    # budget, any LLM judge's): see core.llm.ratelimit and core.llm.budget.
    limits: LimitsRegistry
    budget: Budget
    judges: JudgeModels | None = None

    @classmethod
    def build(cls, loaded: LoadedSpec, *, config: LoomConfig, cache: Any, use_cache: bool,
              resolver: SecretResolver, on_warning: Callable[[str], None],
              record_path: Path | None = None, prompt_text: str | None = None,
              concurrency: int | None = None, budget_usd: Any = _SPEC,
              journal: AnswerJournal | None = None) -> "Runtime":
        """`budget_usd`: the run's budget; by default the pipeline's budget.max_cost_usd
        (None: no budget, for sample runs that must not be stopped by one). `journal`: where a
        recorded run keeps its answers as they arrive (core.llm.answer_journal)."""
        # Literal secrets written in the pipeline (api_key: sk-…, a header value, a URI's
        # password) are masked in answers like resolved ones, whoever builds the runtime (a run,
        # a workbench sample, a quarantine reprocess).
        resolver.add_known(literal_secrets(loaded.raw))
        resolved = resolve_secrets(loaded, resolver)
        spec = resolved.spec
        prompts = load_prompts(loaded)
        if prompt_text is not None:
            prompts = prompts.with_prompt(prompt_text)
        schema = load_output_schema(loaded)
        adaptations = remembered_adaptations(cache, on_warning)
        provider = make_provider(spec.transform, resolved, api_key=spec.transform.api_key,
                                 base_url=spec.transform.base_url, adaptations=adaptations,
                                 masker=resolver.masker)
        recorder = CassetteRecorder(record_path) if record_path else None
        ttl_days = config.cache.ttl_days
        pricing = Pricing.from_config(config).with_overrides(pipeline_prices(spec))
        budget = Budget(spec.budget.max_cost_usd if budget_usd is _SPEC else budget_usd,
                        pricing=pricing, on_warning=on_warning)
        registry = LimitsRegistry()
        rate = spec.transform.rate_limit
        limits = registry.get(provider.name, provider.base_url,
                              concurrency=concurrency or spec.transform.concurrency,
                              requests_per_minute=rate.requests_per_minute,
                              tokens_per_minute=rate.tokens_per_minute)
        client = LLMClient(
            provider, pricing=pricing, cache=cache if spec.transform.cache else None,
            use_cache=use_cache and spec.transform.cache,
            cache_ttl_s=ttl_days * 86400 if ttl_days else None,
            max_retries=spec.transform.max_retries,
            max_throttle_wait_s=spec.transform.rate_limit.max_wait_s,
            concurrency=concurrency or spec.transform.concurrency, limits=limits,
            registry=registry, budget=budget, recorder=recorder, on_warning=on_warning,
            breaker=CircuitBreaker(spec.circuit_breaker.failures), journal=journal,
        )
        # Looked up now, not at the first call: loading the price data takes a moment, which
        # would hold the event loop with calls in flight; and an unpriced budget says so now.
        pricing.known(spec.transform.model, provider=provider.name, base_url=provider.base_url)
        # Likewise the model's tokenizer (importing tiktoken and reading an encoding take a
        # moment): looked up now, once per process.
        TokenCounter.warm(spec.transform.model, provider.name)
        budget.check_priced(spec.transform.model, provider=provider.name,
                            base_url=provider.base_url)
        transformer = Transformer(spec.transform, client, schema, cache_prefix=prefix_marker(prompts),
                                  masker=resolver.masker)
        judges = JudgeModels(run_client=client, resolved=resolved, prompts=prompts, schema=schema,
                             adaptations=adaptations, masker=resolver.masker)
        # A judge the pipeline gets wrong stops the run here, before any connection is opened
        # (httpx clients connect on first use, so the unused ones need no closing).
        evaluators = build_evaluators(loaded, llm=judges)
        processor = RecordProcessor(prompts, transformer, evaluators, spec.evaluate)
        return cls(loaded=resolved, prompts=prompts, client=client, processor=processor,
                   schema=schema, limits=registry, budget=budget, judges=judges)

    async def aclose(self) -> None:
        if self.judges is not None:
            await self.judges.aclose()
        await self.client.aclose()
