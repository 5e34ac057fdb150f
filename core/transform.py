"""The transform stage: rendered messages -> model call -> parse -> validate -> one repair.

A JSON answer is parsed and validated against `output_schema` locally (whatever the provider
promised). When it does not validate, the model gets one chance to repair it, with the
validation error quoted; if that fails too, the record is quarantined at stage `transform`
with the error, the raw answer and every call it cost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema

from core.connectors.parsing import (MAX_NESTING, has_surrogates, not_json_constant, too_deep,
                                     value_problem, without_surrogates)
from core.errors import LoomError, PipelineError
from core.llm.base import CachePrefix, LLMRequest, LLMResponse, StructuredOutput
from core.llm.strict_schema import drop_filled_nulls, is_object_schema
from core.llm.client import LLMClient
from core.records import LLMCall, TransformResult
from core.secrets_mask import SecretMasker
from core.spec import LoadedSpec, TransformSpec
from core.safe_yaml import load_yaml

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


class TransformFailed(LoomError):
    """The record could not be transformed; `partial` keeps what was spent and answered."""

    def __init__(self, message: str, *, error_type: str, partial: TransformResult) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.partial = partial


def load_output_schema(loaded: LoadedSpec) -> dict[str, Any] | None:
    """The output schema, inline or from a .json/.yaml file; checked to be a valid JSON schema."""
    schema = loaded.spec.transform.output_schema
    if isinstance(schema, str):
        path = loaded.resolve(schema)
        try:
            text = path.read_text(encoding="utf-8")
            schema = json.loads(text) if path.suffix == ".json" else load_yaml(text)
        except (OSError, ValueError) as exc:  # YamlError is a ValueError
            raise PipelineError(f"cannot read schema {path.name}: {exc}".splitlines()[0],
                                file=str(loaded.path), key="transform.output_schema") from None
        except RecursionError:  # json.loads recurses once per nesting level
            raise PipelineError(f"cannot read schema {path.name}: nested too deep",
                                file=str(loaded.path), key="transform.output_schema") from None
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise PipelineError("output_schema must be a JSON schema object", file=str(loaded.path),
                            key="transform.output_schema")
    if not is_object_schema(schema):
        raise PipelineError("output_schema must be an object at its root (type: object): OpenAI "
                            "and Anthropic refuse any other root", file=str(loaded.path),
                            key="transform.output_schema")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PipelineError(f"not a valid JSON schema: {exc.message}", file=str(loaded.path),
                            key="transform.output_schema") from None
    return schema


def parse_json_answer(text: str) -> Any:
    """The JSON in a model's answer; tolerates a ```json fence around it. Raises ValueError for
    what is not JSON Loom can carry: NaN or Infinity (which would make JSON outputs not JSON),
    nesting deeper than MAX_NESTING levels, or a lone surrogate (which no UTF-8 store holds)."""
    match = _FENCE.match(text)
    body = match.group(1) if match else text
    try:
        value = json.loads(body, parse_constant=not_json_constant)
    except RecursionError:
        raise ValueError(too_deep()) from None
    deep = body.count("[") + body.count("{") > MAX_NESTING
    escapes = "\\u" in body
    if deep or escapes:
        problem = value_problem(value, check_depth=deep, check_text=escapes)
        if problem is not None:
            raise ValueError(problem)
    return value


# A cut-off answer is asked again once with this much more room (never the same budget twice).
TRUNCATION_GROWTH = 2
TRUNCATED = frozenset({"length", "max_tokens"})  # OpenAI's finish_reason, Anthropic's stop_reason


def truncation(response: LLMResponse, max_tokens: int | None) -> str | None:
    """Why an answer was cut off at its token limit, or None when it was not."""
    if response.finish_reason not in TRUNCATED:
        return None
    limit = f"max_tokens={max_tokens}" if max_tokens else "the provider's own limit"
    spent = f"{response.output_tokens:,} output tokens"
    if response.reasoning_tokens:
        spent += f", {response.reasoning_tokens:,} of them reasoning"
    return f"answer cut off at {limit} (finish_reason {response.finish_reason}; {spent})"


class Transformer:
    def __init__(self, spec: TransformSpec, client: LLMClient, schema: dict[str, Any] | None,
                 *, cache_prefix: Callable[[list[dict[str, str]]], CachePrefix | None] | None = None,
                 masker: SecretMasker | None = None) -> None:
        self.spec = spec
        # The run's masker: the answer's text was masked as it arrived, but JSON inside it may
        # write a secret's characters as \\uXXXX escapes, which only decoding reveals.
        self._masker = masker
        self.client = client
        self.schema = schema
        self.wants_json = spec.wants_json or schema is not None
        self._validator = (jsonschema.validators.validator_for(schema)(schema)
                           if schema is not None else None)
        self._cache_prefix = cache_prefix

    def request(self, messages: list[dict[str, str]], *, max_tokens: int | None = None) -> LLMRequest:
        spec = self.spec
        return LLMRequest(
            model=spec.model, messages=messages, temperature=spec.temperature,
            max_tokens=max_tokens or spec.max_tokens, top_p=spec.top_p, seed=spec.seed,
            output_schema=self.schema, json_mode=self.wants_json and self.schema is None,
            stage="transform", params=dict(spec.params),
            structured_output=StructuredOutput(spec.structured_output) if spec.structured_output else None,
            cache_prefix=self._cache_prefix(messages) if self._cache_prefix else None,
            prompt_cache=spec.prompt_cache,
        )

    async def run(self, messages: list[dict[str, str]]) -> TransformResult:
        calls: list[LLMCall] = []
        result = TransformResult(output=None, raw_text="", messages=messages, calls=calls)
        response = await self._call(messages, result)
        limit = self.spec.max_tokens
        cut = truncation(response, limit)
        if cut is not None:
            response = await self._with_more_room(messages, result, cut)
            limit = (limit or 0) * TRUNCATION_GROWTH  # the repair keeps the room it was given
        if not self.wants_json:
            result.output = {"text": response.text}
            return result
        problem = self._check(response, result)
        if problem is None:
            return result
        # One repair: show the model its answer and what was wrong with it.
        repair = messages + [
            {"role": "assistant", "content": response.text},
            {"role": "user", "content": (
                f"Your answer was not valid: {problem}\n"
                "Reply again with only the corrected JSON, nothing else.")},
        ]
        response = await self._call(repair, result, max_tokens=limit)
        second = self._check(response, result)
        if second is None:
            return result
        cut = truncation(response, limit)
        if cut is not None:
            raise TransformFailed(f"{cut} after one repair", error_type="Truncated", partial=result)
        raise TransformFailed(f"output invalid after one repair: {second}",
                              error_type="OutputValidationError", partial=result)

    async def _with_more_room(self, messages: list[dict[str, str]], result: TransformResult,
                              cut: str) -> LLMResponse:
        """A cut-off answer asked again with more room; without a limit of our own there is
        no more room to give, and asking again would pay for the same cut."""
        limit = self.spec.max_tokens
        if not limit:
            raise TransformFailed(f"{cut}: set transform.max_tokens", error_type="Truncated",
                                  partial=result)
        response = await self._call(messages, result, max_tokens=limit * TRUNCATION_GROWTH)
        again = truncation(response, limit * TRUNCATION_GROWTH)
        if again is not None:
            raise TransformFailed(f"{again}, after a first answer cut off at max_tokens={limit}: "
                                  f"raise transform.max_tokens", error_type="Truncated", partial=result)
        return response

    async def _call(self, messages: list[dict[str, str]], result: TransformResult, *,
                    max_tokens: int | None = None) -> LLMResponse:
        try:
            response, call = await self.client.complete(self.request(messages, max_tokens=max_tokens))
        except LoomError as exc:
            raise TransformFailed(str(exc), error_type=type(exc).__name__, partial=result) from exc
        result.calls.append(call)
        text = response.text
        if has_surrogates(text):
            # A lone surrogate cannot be stored, written or sent on: the record is quarantined
            # with the answer as near as it can be kept.
            result.raw_text = without_surrogates(text)
            raise TransformFailed("the model's answer holds a lone surrogate (not Unicode text)",
                                  error_type="InvalidAnswer", partial=result)
        result.raw_text = text
        return response

    def _check(self, response: LLMResponse, result: TransformResult) -> str | None:
        """Parse and validate; on success set result.output and return None, else the problem."""
        text = response.text
        if not text.strip() and response.finish_reason in TRUNCATED:
            return "empty answer (cut off at the token limit)"
        try:
            value = parse_json_answer(text)
            if self._masker is not None:
                value = self._masker.mask_tree(value)
        except ValueError as exc:
            snippet = text if len(text) <= 80 else text[:77] + "..."
            return f"not JSON ({exc.msg if hasattr(exc, 'msg') else exc}): {snippet!r}"
        if self.schema is not None and response.structured_output is StructuredOutput.JSON_SCHEMA:
            # Strict mode makes the model fill optional properties with null: not an answer.
            value = drop_filled_nulls(value, self.schema)
        if self._validator is not None:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return f"does not match output_schema at {where}: {error.message}"
        result.output = value
        return None
