"""What the real OpenAI and Anthropic APIs reject: the loopback server's strict mode.

`tests/support/llm_server.py` imports this only when a server runs with `strict=True`
(`--strict` on its command line); a non-strict server never touches it, so the benchmark's
request path stays as cheap as it was.

This is the tests' oracle, so it is kept independent of Loom's own model knowledge under
`core/`: its model table is written out here, from the vendors' API references, the official
SDKs' request types (openai 3.x, anthropic 2.x) and LiteLLM's model data
(`supports_reasoning`, `supports_sampling_params`, `supports_forced_tool_use`). A model the
table does not know gets the permissive profile of an ordinary chat model of its vendor (the
suite is full of made-up names such as "m"), so strict mode rejects what a known model's real
API rejects and never invents a 404.

Each check returns a `Rejection` (status, error type, message, and for OpenAI the `param` and
`code` fields) with the real APIs' message texts, or None. The prompt-cache simulations
(`OpenAIPromptCache`, `AnthropicPromptCache`) live here too: they report the usage fields the
real caches report, keyed by the prompt prefix, with the server's ~4 characters per token.
`StrictMode` is one server's share of all this (its caches, the checks, the usage it adds).
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------- the model table


@dataclass(frozen=True)
class OpenAIModel:
    reasoning: bool = False  # o-series, gpt-5*, gpt-6*: fixed sampling, max_completion_tokens
    json_schema: bool = True  # response_format json_schema (structured outputs)


@dataclass(frozen=True)
class AnthropicModel:
    fixed_sampling: bool = False  # temperature (other than 1), top_p, top_k rejected
    forced_tool: bool = True  # tool_choice {type: tool} / {type: any} accepted
    native_schema: bool = True  # output_config.format json_schema accepted
    min_cache_tokens: int = 1024  # shortest prefix a cache_control breakpoint caches
    always_thinks: bool = False  # adaptive thinking always on (reasoning spends max_tokens)


_CHAT = OpenAIModel()
_REASONING = OpenAIModel(reasoning=True)

# Families by name prefix: the longest key that is the model's name, or a prefix of it followed
# by "-" or "." (dated snapshots, ".1" minor versions, "-mini"), decides.
OPENAI_MODELS: dict[str, OpenAIModel] = {
    "gpt-3.5-turbo": OpenAIModel(json_schema=False),
    "gpt-4": OpenAIModel(json_schema=False),
    "gpt-4-turbo": OpenAIModel(json_schema=False),
    "gpt-4o": _CHAT,
    "gpt-4o-mini": _CHAT,
    "gpt-4.1": _CHAT,
    "gpt-4.1-mini": _CHAT,
    "gpt-4.1-nano": _CHAT,
    "o1": _REASONING,
    "o1-mini": _REASONING,
    "o1-pro": _REASONING,
    "o3": _REASONING,
    "o3-mini": _REASONING,
    "o3-pro": _REASONING,
    "o4-mini": _REASONING,
    "gpt-5": _REASONING,  # and gpt-5-mini, gpt-5-nano, gpt-5.1 ... gpt-5.6-*
    "gpt-6": _REASONING,  # gpt-6-astra, gpt-6-sol, gpt-6-luna, gpt-6.1-sol
}

_ANTHROPIC_DEFAULT = AnthropicModel()
_LEGACY = AnthropicModel(native_schema=False)
_FIXED = AnthropicModel(fixed_sampling=True)
_FIXED_NO_FORCE = AnthropicModel(fixed_sampling=True, forced_tool=False, always_thinks=True)

# Minimum cacheable lengths from Anthropic's prompt-caching page: 4096 for Opus 4.5/4.6 and
# Haiku 4.5, 2048 for Haiku 3/3.5 (and Opus 4.7), 1024 for the Sonnets and Opus 4/4.1/4.8,
# 512 for the 5-generation Opus, Fable and Mythos.
ANTHROPIC_MODELS: dict[str, AnthropicModel] = {
    "claude-3-haiku": AnthropicModel(native_schema=False, min_cache_tokens=2048),
    "claude-3-5-haiku": AnthropicModel(native_schema=False, min_cache_tokens=2048),
    "claude-3-opus": _LEGACY,
    "claude-3-5-sonnet": _LEGACY,
    "claude-3-7-sonnet": _LEGACY,
    "claude-sonnet-4": _LEGACY,  # claude-sonnet-4-20250514 (4.0): no native schema output
    "claude-opus-4": _LEGACY,
    "claude-opus-4-1": _ANTHROPIC_DEFAULT,
    "claude-sonnet-4-5": _ANTHROPIC_DEFAULT,
    "claude-sonnet-4-6": _ANTHROPIC_DEFAULT,
    "claude-haiku-4-5": AnthropicModel(min_cache_tokens=4096),
    "claude-opus-4-5": AnthropicModel(min_cache_tokens=4096),
    "claude-opus-4-6": AnthropicModel(min_cache_tokens=4096),
    "claude-opus-4-7": AnthropicModel(fixed_sampling=True, min_cache_tokens=2048),
    "claude-opus-4-8": _FIXED,
    "claude-opus-5": AnthropicModel(fixed_sampling=True, min_cache_tokens=512),
    "claude-opus-5-5": AnthropicModel(fixed_sampling=True, forced_tool=False,
                                      always_thinks=True, min_cache_tokens=512),
    "claude-sonnet-5": _FIXED,
    "claude-sonnet-5-5": _FIXED_NO_FORCE,
    "claude-haiku-5-5": AnthropicModel(fixed_sampling=True, min_cache_tokens=4096),
    "claude-fable-5": AnthropicModel(fixed_sampling=True, min_cache_tokens=512),
    "claude-fable-5-1": AnthropicModel(fixed_sampling=True, forced_tool=False,
                                       always_thinks=True, min_cache_tokens=512),
    "claude-fable": AnthropicModel(fixed_sampling=True, min_cache_tokens=512),
    "claude-mythos-5": AnthropicModel(fixed_sampling=True, min_cache_tokens=512),
    "claude-mythos-5-1": AnthropicModel(fixed_sampling=True, forced_tool=False,
                                        always_thinks=True, min_cache_tokens=512),
    "claude-mythos": AnthropicModel(fixed_sampling=True, min_cache_tokens=512),
}

_DATED = re.compile(r"-(\d{8}|latest)$")


def _lookup(table: dict[str, Any], model: str, default: Any) -> Any:
    name = _DATED.sub("", model.lower())
    best, best_len = default, -1
    for key, profile in table.items():
        if (name == key or name.startswith(key + "-") or name.startswith(key + ".")) \
                and len(key) > best_len:
            best, best_len = profile, len(key)
    return best


def openai_model(model: str) -> OpenAIModel:
    return _lookup(OPENAI_MODELS, model, _CHAT)


def anthropic_model(model: str) -> AnthropicModel:
    # claude-sonnet-4-5 must not fall to claude-sonnet-4 (4.0): the longest key wins.
    return _lookup(ANTHROPIC_MODELS, model, _ANTHROPIC_DEFAULT)


# ---------------------------------------------------------------- rejections


@dataclass(frozen=True)
class Rejection:
    message: str
    param: str | None = None
    code: str | None = None
    status: int = 400
    kind: str = "invalid_request_error"


# The body keys openai 3.x sends for chat.completions.create (its `body=` dict), plus the
# legacy ones the API still takes.
OPENAI_KEYS = frozenset({
    "model", "messages", "stream", "service_tier", "audio", "frequency_penalty",
    "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "stop", "store", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options"})
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
# Sampling and scoring knobs reasoning models refuse outright.
REASONING_UNSUPPORTED = ("top_p", "presence_penalty", "frequency_penalty", "logprobs",
                         "top_logprobs", "logit_bias")

# Structured-outputs strict mode: keywords it does not take (composition other than anyOf,
# the object and array constraints it cannot compile, string lengths). It does take pattern,
# format, minimum/maximum/exclusive*/multipleOf, minItems/maxItems, enum, const, anyOf, $ref,
# $defs, description, title.
STRICT_UNSUPPORTED = frozenset({
    "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
    "oneOf", "patternProperties", "unevaluatedProperties", "propertyNames", "minProperties",
    "maxProperties", "unevaluatedItems", "contains", "minContains", "maxContains",
    "uniqueItems", "minLength", "maxLength"})
STRICT_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname",
                            "ipv4", "ipv6", "uuid"})
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _unsupported_param(name: str, extra: str = "") -> Rejection:
    return Rejection(f"Unsupported parameter: '{name}' is not supported with this model.{extra}",
                     param=name, code="unsupported_parameter")


def _number(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (int, float)) else repr(value)


def check_openai(body: dict[str, Any], headers: Any) -> Rejection | None:
    """The first thing the chat-completions endpoint would refuse in this body, or None."""
    for key in body:
        if key not in OPENAI_KEYS:
            return Rejection(f"Unrecognized request argument supplied: {key}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return Rejection("you must provide a model parameter", param=None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Rejection("[] is too short - 'messages'" if messages == [] else
                         "Missing required parameter: 'messages'.", param="messages",
                         code="missing_required_parameter" if messages is None else None)
    profile = openai_model(model)
    if profile.reasoning:
        if "max_tokens" in body:
            return _unsupported_param("max_tokens", " Use 'max_completion_tokens' instead.")
        temperature = body.get("temperature")
        if temperature is not None and temperature != 1:
            return Rejection(f"Unsupported value: 'temperature' does not support "
                             f"{_number(temperature)} with this model. Only the default (1) "
                             f"value is supported.", param="temperature", code="unsupported_value")
        for name in REASONING_UNSUPPORTED:
            if body.get(name) is not None:
                return _unsupported_param(name)
    elif body.get("reasoning_effort") is not None:
        return _unsupported_param("reasoning_effort")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        return Rejection(f"Invalid value: '{effort}'. Supported values are: "
                         + _choices(REASONING_EFFORTS) + ".", param="reasoning_effort",
                         code="invalid_value")
    tier = body.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        return Rejection(f"Invalid value: '{tier}'. Supported values are: "
                         + _choices(SERVICE_TIERS) + ".", param="service_tier",
                         code="invalid_value")
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not 0 <= temperature <= 2:
        side, bound = ("above maximum", "<= 2") if temperature > 2 else ("below minimum", ">= 0")
        return Rejection(f"Invalid 'temperature': decimal {side} value. Expected a value "
                         f"{bound}, but got {_number(temperature)} instead.", param="temperature",
                         code="decimal_above_max_value" if temperature > 2 else
                         "decimal_below_min_value")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            return Rejection(f"Invalid '{name}': integer below minimum value. Expected a value "
                             f">= 1, but got {_number(value)} instead.", param=name,
                             code="integer_below_min_value")
    response_format = body.get("response_format")
    if response_format is not None:
        return _check_response_format(response_format, messages, profile)
    return None


def _choices(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _check_response_format(response_format: Any, messages: list[Any],
                           profile: OpenAIModel) -> Rejection | None:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        if not any("json" in _message_text(m).lower() for m in messages if isinstance(m, dict)):
            return Rejection("'messages' must contain the word 'json' in some form, to use "
                             "'response_format' of type 'json_object'.", param="messages")
        return None
    if kind != "json_schema":
        return Rejection(f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object',"
                         f" and 'json_schema'.", param="response_format.type",
                         code="invalid_value")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        return Rejection("Missing required parameter: 'response_format.json_schema'.",
                         param="response_format.json_schema", code="missing_required_parameter")
    name = spec.get("name")
    if not isinstance(name, str):
        return Rejection("Missing required parameter: 'response_format.json_schema.name'.",
                         param="response_format.json_schema.name",
                         code="missing_required_parameter")
    if not _NAME.match(name):
        return Rejection("Invalid 'response_format.json_schema.name': string does not match "
                         "pattern. Expected a string that matches the pattern "
                         "'^[a-zA-Z0-9_-]+$'.", param="response_format.json_schema.name",
                         code="invalid_value")
    if not profile.json_schema:
        return Rejection("Invalid parameter: 'response_format' of type 'json_schema' is not "
                         "supported with this model. Learn more about supported models at the "
                         "Structured Outputs guide: https://platform.openai.com/docs/guides/"
                         "structured-outputs", param="response_format")
    schema = spec.get("schema")
    prefix = f"Invalid schema for response_format '{name}': "
    if schema is None:
        schema = {}
    if not isinstance(schema, dict) or schema.get("type") != "object":
        got = schema.get("type") if isinstance(schema, dict) else None
        got = "None" if got is None else got
        return Rejection(prefix + f"schema must be a JSON Schema of 'type: \"object\"', got "
                         f"'type: \"{got}\"'.", param="response_format")
    if spec.get("strict") is True:
        problem = _strict_problem(schema, (), 0)
        if problem is not None:
            return Rejection(prefix + problem, param="response_format")
    return None


def _strict_problem(schema: Any, context: tuple[str, ...], depth: int) -> str | None:
    where = f"In context={context!r}, "
    if not isinstance(schema, dict):
        return where + "schema must be a JSON Schema object." if not isinstance(schema, bool) \
            else None
    if depth > 10:
        return where + "the schema exceeds the maximum nesting depth of 10."
    for key in schema:
        if key in STRICT_UNSUPPORTED:
            return where + f"'{key}' is not permitted."
    fmt = schema.get("format")
    if fmt is not None and fmt not in STRICT_FORMATS:
        return where + f"'format' value '{fmt}' is not permitted."
    if "$ref" in schema and len(schema) > 1 and not set(schema) <= {"$ref", "description"}:
        return where + "'$ref' cannot have keywords {" + ", ".join(
            sorted(repr(k) for k in schema if k != "$ref")) + "}."
    kinds = schema.get("type")
    is_object = kinds == "object" or (isinstance(kinds, list) and "object" in kinds) \
        or "properties" in schema
    if is_object:
        if schema.get("additionalProperties") is not False:
            return where + "'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        required = schema.get("required")
        if properties and not isinstance(required, list):
            return where + ("'required' is required to be supplied and to be an array including "
                            "every key in properties. Missing '" + next(iter(properties)) + "'.")
        required = required or []
        for key in properties:
            if key not in required:
                return where + ("'required' is required to be supplied and to be an array "
                                f"including every key in properties. Missing '{key}'.")
        for key in required:
            if key not in properties:
                return where + f"Extra required key '{key}' supplied."
        for key, sub in properties.items():
            problem = _strict_problem(sub, (*context, "properties", key), depth + 1)
            if problem:
                return problem
    items = schema.get("items")
    if isinstance(items, dict):
        problem = _strict_problem(items, (*context, "items"), depth + 1)
        if problem:
            return problem
    for word in ("anyOf",):
        variants = schema.get(word)
        if isinstance(variants, list):
            for i, sub in enumerate(variants):
                problem = _strict_problem(sub, (*context, word, str(i)), depth + 1)
                if problem:
                    return problem
    for word in ("$defs", "definitions"):
        defs = schema.get(word)
        if isinstance(defs, dict):
            for key, sub in defs.items():
                problem = _strict_problem(sub, (*context, word, key), depth + 1)
                if problem:
                    return problem
    return None


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# ---------------------------------------------------------------- Anthropic

# The body keys anthropic 2.x sends for messages.create, the beta client's extras, and the
# sampling parameters the API still takes from older models (the 2.x SDK no longer has them
# as arguments; they reach the API through extra_body).
ANTHROPIC_KEYS = frozenset({
    "max_tokens", "messages", "model", "cache_control", "container", "diagnostics",
    "inference_geo", "metadata", "output_config", "service_tier", "speed", "stop_sequences",
    "stream", "system", "thinking", "tool_choice", "tools",
    "temperature", "top_p", "top_k",
    # beta (client.beta.messages.create)
    "billing_policy", "compaction", "context_management", "fallback_credit_token",
    "fallbacks", "mcp_servers", "thread"})
STRUCTURED_OUTPUTS_BETA = "structured-outputs-2025-11-13"
MAX_BREAKPOINTS = 4


def check_anthropic(body: dict[str, Any], headers: Any) -> Rejection | None:
    """The first thing the Messages endpoint would refuse in this body, or None."""
    betas = headers.get("anthropic-beta", "") if headers is not None else ""
    for key in body:
        if key == "output_format":
            if STRUCTURED_OUTPUTS_BETA in betas:
                continue  # the transition period: the old beta field with its header
            return Rejection("output_format: This field is deprecated. Use "
                             "'output_config.format' instead. See https://platform.claude.com/"
                             "docs/en/build-with-claude/structured-outputs for more information.")
        if key not in ANTHROPIC_KEYS:
            return Rejection(f"{key}: Extra inputs are not permitted")
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            return Rejection(f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool) \
            or body["max_tokens"] < 1:
        return Rejection("max_tokens: Input should be greater than or equal to 1")
    if not isinstance(body["model"], str) or not isinstance(body["messages"], list):
        return Rejection("model and messages are required")
    profile = anthropic_model(body["model"])
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or any(
                not isinstance(b, dict) or b.get("type") != "text"
                or not isinstance(b.get("text"), str) for b in system):
            return Rejection("system: Input should be a valid string or a list of text blocks")
    for i, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            return Rejection('messages: Unexpected role "system". The Messages API accepts a '
                             'top-level `system` parameter, not "system" as an input message '
                             'role.')
        if role not in ("user", "assistant"):
            return Rejection(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not 0 <= temperature <= 1:
        return Rejection("temperature: Input should be less than or equal to 1"
                         if temperature > 1 else
                         "temperature: Input should be greater than or equal to 0")
    if profile.fixed_sampling:
        for name in ("temperature", "top_p", "top_k"):
            value = body.get(name)
            if value is None or (name == "temperature" and value == 1):
                continue
            return Rejection(f"`{name}` is deprecated for this model.")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return Rejection("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or "type" in tool and tool["type"] != "custom" \
                    and "input_schema" not in tool:
                continue  # server tools (web_search_...) carry their own shapes
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                return Rejection(f"tools.{i}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                return Rejection(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
    choice = body.get("tool_choice")
    forced = isinstance(choice, dict) and choice.get("type") in ("tool", "any")
    if forced and not profile.forced_tool:
        return Rejection('tool_choice: type "tool" and "any" are not supported for this model.')
    thinking = body.get("thinking")
    if forced and isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        return Rejection("Thinking may not be enabled when tool_choice forces tool use.")
    if forced and not body.get("tools"):
        return Rejection("tool_choice: tool_choice may only be specified while providing tools.")
    fmt, where = output_format(body)
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            return Rejection(f"{where}.type: Input should be 'json_schema'")
        if not profile.native_schema:
            return Rejection(f"'{body['model']}' does not support structured outputs "
                             f"({where}).")
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            return Rejection(f"{where}.schema: Field required")
        if schema.get("type") != "object":
            return Rejection(f"{where}.schema: the root of an output schema must be of type "
                             f"'object', not {json.dumps(schema.get('type'))}.")
    breakpoints = sum(1 for block in _blocks(body) if block[1] is not None)
    if breakpoints > MAX_BREAKPOINTS:
        return Rejection(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be "
                         f"provided. Found {breakpoints}.")
    for _, control in _blocks(body):
        if control is not None and (not isinstance(control, dict)
                                    or control.get("type") != "ephemeral"
                                    or control.get("ttl", "5m") not in ("5m", "1h")):
            return Rejection("cache_control: Input should be {'type': 'ephemeral'} with an "
                             "optional ttl of '5m' or '1h'")
    return None


def output_format(body: dict[str, Any]) -> tuple[Any, str]:
    """The structured-output format a Messages body asks for, and the field it came in."""
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        return config["format"], "output_config.format"
    if body.get("output_format") is not None:
        return body["output_format"], "output_format"
    return None, ""


def _blocks(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """The prompt in cache order (tools, system, messages): (text, cache_control) per block."""
    out: list[tuple[str, Any]] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                out.append(("", tool.get("cache_control")))
    system = body.get("system")
    if isinstance(system, str):
        out.append((system, None))
    elif isinstance(system, list):
        for block in system:
            if isinstance(block, dict):
                text = block.get("text")
                out.append((text if isinstance(text, str) else "", block.get("cache_control")))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append((content, None))
            elif isinstance(content, list):
                for block in content:
                    if isinstance(block, dict):
                        text = block.get("text")
                        out.append((text if isinstance(text, str) else "",
                                    block.get("cache_control")))
    top = body.get("cache_control")
    if top is not None and out:  # automatic caching: the last cacheable block
        text, control = out[-1]
        out[-1] = (text, control if control is not None else top)
    return out


# ---------------------------------------------------------------- prompt caches

CHARS_PER_TOKEN = 4
OPENAI_MIN_PREFIX = 1024  # tokens
OPENAI_INCREMENT = 128  # tokens: hits grow in these steps past the first 1024


class OpenAIPromptCache:
    """Automatic prefix caching: a prompt that shares ≥ 1024 tokens with an earlier one (same
    model) reports the shared part, in 128-token steps, as `cached_tokens`."""

    def __init__(self, keep: int = 100_000) -> None:
        self._seen: dict[tuple[str, bytes], None] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def lookup_and_store(self, model: str, prompt: str) -> int:
        tokens = len(prompt) // CHARS_PER_TOKEN
        if tokens < OPENAI_MIN_PREFIX:
            return 0
        digest = hashlib.sha256()
        done = 0
        keys = []
        for end_tokens in range(OPENAI_MIN_PREFIX, tokens + 1, OPENAI_INCREMENT):
            end = end_tokens * CHARS_PER_TOKEN
            digest.update(prompt[done:end].encode())
            done = end
            keys.append((end_tokens, (model, digest.copy().digest())))
        with self._lock:
            hit = 0
            for end_tokens, key in keys:
                if key in self._seen:
                    hit = end_tokens
                else:
                    self._seen[key] = None
            while len(self._seen) > self._keep:
                self._seen.pop(next(iter(self._seen)))
        return hit


@dataclass
class CacheUsage:
    read: int = 0
    written_5m: int = 0
    written_1h: int = 0

    @property
    def written(self) -> int:
        return self.written_5m + self.written_1h


class AnthropicPromptCache:
    """Explicit breakpoints: the prefix up to a `cache_control` block, if at least the model's
    minimum, is written on first sight and read afterwards (same model, same prefix)."""

    def __init__(self, keep: int = 100_000) -> None:
        self._seen: dict[tuple[str, bytes], None] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def lookup_and_store(self, body: dict[str, Any]) -> CacheUsage:
        usage = CacheUsage()
        blocks = _blocks(body)
        if not any(control is not None for _, control in blocks):
            return usage
        model = str(body.get("model"))
        minimum = anthropic_model(model).min_cache_tokens
        digest = hashlib.sha256()
        length = 0
        points: list[tuple[int, bytes, str]] = []  # (prefix tokens, key, ttl)
        for text, control in blocks:
            digest.update(text.encode())
            digest.update(b"\x00")  # block boundaries are part of the prefix
            length += len(text)
            if control is not None:
                ttl = control.get("ttl", "5m") if isinstance(control, dict) else "5m"
                points.append((length // CHARS_PER_TOKEN, digest.copy().digest(), ttl))
        with self._lock:
            for tokens, key, _ in points:
                if (model, key) in self._seen and tokens >= minimum:
                    usage.read = max(usage.read, tokens)
            counted = usage.read
            for tokens, key, ttl in points:
                if tokens < minimum or tokens <= counted:
                    continue
                if (model, key) not in self._seen:
                    self._seen[(model, key)] = None
                segment = tokens - counted
                if ttl == "1h":
                    usage.written_1h += segment
                else:
                    usage.written_5m += segment
                counted = tokens
            while len(self._seen) > self._keep:
                self._seen.pop(next(iter(self._seen)))
        return usage


# ---------------------------------------------------------------- one server's strict mode


class StrictMode:
    """A server's strict-mode state (its prompt caches) and what strict mode does to a request
    and to an answer's usage. The server creates one the first time a strict flag is on."""

    def __init__(self) -> None:
        self.openai_cache = OpenAIPromptCache()
        self.anthropic_cache = AnthropicPromptCache()

    def clear(self) -> None:
        self.openai_cache.clear()
        self.anthropic_cache.clear()

    def check(self, anthropic: bool, body: dict[str, Any], headers: Any,
              api_key: str | None) -> Rejection | None:
        if anthropic:
            # anthropic 2.x sends the key as `Authorization: Bearer`, older clients `x-api-key`.
            if api_key is not None and headers.get("x-api-key") != api_key \
                    and headers.get("authorization") != f"Bearer {api_key}":
                return Rejection("invalid x-api-key", status=401, kind="authentication_error")
            if "anthropic-version" not in headers:
                return Rejection("anthropic-version: header is required")
            return check_anthropic(body, headers)
        if api_key is not None and headers.get("authorization") != f"Bearer {api_key}":
            key = headers.get("authorization", "").removeprefix("Bearer ")
            shown = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else "***"
            return Rejection(f"Incorrect API key provided: {shown}. You can find your API key at "
                             "https://platform.openai.com/account/api-keys.", status=401,
                             code="invalid_api_key")
        return check_openai(body, headers)

    def openai_answer(self, body: dict[str, Any], prompt: str, answer: str, finish: str,
                      usage: dict[str, Any], *, prompt_cache: bool,
                      spend_below: int) -> tuple[str, str]:
        """The (answer, finish_reason) to send; `usage` updated in place."""
        model = str(body.get("model"))
        if prompt_cache:
            hit = self.openai_cache.lookup_and_store(model, prompt)
            details = usage["prompt_tokens_details"]
            details["cached_tokens"] = max(details["cached_tokens"], hit)
        if openai_model(model).reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": 0}
            budget = body.get("max_completion_tokens")
            if isinstance(budget, int) and budget < spend_below:
                usage["completion_tokens_details"]["reasoning_tokens"] = budget
                usage["completion_tokens"] = budget
                usage["total_tokens"] = usage["prompt_tokens"] + budget
                return "", "length"
        return answer, finish

    def anthropic_usage(self, body: dict[str, Any], usage: dict[str, Any], prompt_tokens: int, *,
                        prompt_cache: bool, spend_below: int) -> bool:
        """Update `usage` in place; True when reasoning spent the whole budget."""
        if prompt_cache:
            hit = self.anthropic_cache.lookup_and_store(body)
            read = max(usage["cache_read_input_tokens"], min(hit.read, prompt_tokens))
            written = min(hit.written, prompt_tokens - read)
            usage.update(input_tokens=max(0, prompt_tokens - read - written),
                         cache_read_input_tokens=read, cache_creation_input_tokens=written,
                         cache_creation={"ephemeral_5m_input_tokens": hit.written_5m,
                                         "ephemeral_1h_input_tokens": hit.written_1h})
        if spend_below:
            thinking = body.get("thinking")
            thinks = anthropic_model(str(body.get("model"))).always_thinks or (
                isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"))
            limit = body.get("max_tokens")
            if thinks and isinstance(limit, int) and limit < spend_below:
                usage.update(output_tokens=limit, output_tokens_details={"thinking_tokens": limit})
                return True
        return False

    @staticmethod
    def structured(body: dict[str, Any]) -> bool:
        """Whether a Messages body asks for native structured output (answered as text)."""
        return output_format(body)[0] is not None
