"""Requests shaped per model: sampling only when set and taken, the token limit's name, the
structured-output mode, open params and headers, and adapting once to a refusal."""

from __future__ import annotations

import json

import pytest

from core.errors import ProviderError
from core.llm.adaptation import Adaptation, AdaptationKind, Adaptations
from core.llm.anthropic import AnthropicProvider
from core.llm.base import LLMRequest, StructuredOutput
from core.llm.openai import OpenAIProvider
from core.llm.strict_schema import drop_filled_nulls, for_anthropic, for_openai
from core.store import Store

SCHEMA = {"type": "object", "required": ["sentiment"],
          "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                         "summary": {"type": "string", "maxLength": 200}}}
ANSWER = 'Classify, in JSON.\nreply: {"sentiment": "positive"}'


def request(model: str, **fields) -> LLMRequest:
    return LLMRequest(model=model, messages=[{"role": "user", "content": ANSWER}], **fields)


@pytest.fixture
async def compatible(llm_server):
    notes: list[str] = []
    provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url, timeout_s=5,
                              adaptations=Adaptations(on_learned=notes.append))
    provider.notes = notes
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic(llm_server):
    notes: list[str] = []
    provider = AnthropicProvider(api_key="sk-ant-test-0123456789",
                                 base_url=llm_server.anthropic_base_url, timeout_s=5,
                                 adaptations=Adaptations(on_learned=notes.append))
    provider.notes = notes
    yield provider
    await provider.aclose()


# ---------------------------------------------------------------- sampling and limits


async def test_sampling_parameters_are_sent_only_when_set(compatible, llm_server):
    await compatible.complete(request("gpt-4o-mini"))
    assert not {"temperature", "top_p", "seed", "max_tokens"} & set(llm_server.requests[-1])
    await compatible.complete(request("gpt-4o-mini", temperature=0.0, max_tokens=50))
    body = llm_server.requests[-1]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 50


async def test_a_reasoning_model_known_by_its_data_gets_max_completion_tokens_and_no_sampling(
        compatible, llm_server):
    # gpt-6-sol matches no name pattern: only the model data says it reasons.
    await compatible.complete(request("gpt-6-sol", temperature=0.0, max_tokens=64))
    body = llm_server.requests[-1]
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
    assert "temperature" not in body
    assert any("temperature not sent" in note for note in compatible.notes)


async def test_anthropic_models_that_take_no_sampling_get_none(anthropic, llm_server):
    await anthropic.complete(request("claude-opus-4-7", temperature=0.0, top_p=0.5))
    body = llm_server.requests[-1]
    assert "temperature" not in body and "top_p" not in body
    await anthropic.complete(request("claude-haiku-4-5", temperature=0.2))
    assert llm_server.requests[-1]["temperature"] == 0.2


# ---------------------------------------------------------------- structured output


def test_openai_strict_schema_closes_objects_requires_all_and_moves_refused_keywords():
    strict = for_openai(SCHEMA)
    assert strict["additionalProperties"] is False
    assert strict["required"] == ["sentiment", "summary"]
    summary = strict["properties"]["summary"]
    assert summary["type"] == ["string", "null"]  # optional -> required but nullable
    assert "maxLength" not in summary and "maxLength: 200" in summary["description"]
    assert SCHEMA["properties"]["summary"] == {"type": "string", "maxLength": 200}  # untouched
    # What strict mode cannot express is None: the caller uses a weaker mode.
    assert for_openai({"type": "object", "additionalProperties": {"type": "string"}}) is None
    assert for_openai({"type": "array", "items": {"type": "string"}}) is None


def test_anthropic_native_schema_keeps_optional_properties_optional():
    native = for_anthropic({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}})
    assert native["additionalProperties"] is False and "required" not in native
    assert "minimum" not in native["properties"]["n"]


def test_nulls_strict_mode_made_the_model_write_are_dropped_before_validation():
    answer = {"sentiment": "positive", "summary": None}
    assert drop_filled_nulls(answer, SCHEMA) == {"sentiment": "positive"}
    nullable = {"type": "object", "properties": {"note": {"type": ["string", "null"]}}}
    assert drop_filled_nulls({"note": None}, nullable) == {"note": None}


async def test_openai_compatible_sends_strict_json_schema(compatible, llm_server):
    answer = await compatible.complete(request("gpt-4o-mini", output_schema=SCHEMA))
    body = llm_server.requests[-1]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert answer.structured_output is StructuredOutput.JSON_SCHEMA


@pytest.mark.parametrize("mode, expected", [
    ("json_object_schema", {"type": "json_object", "schema": SCHEMA}),
    ("json_object", {"type": "json_object"}),
])
async def test_openai_compatible_structured_output_modes(llm_server, mode, expected):
    provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url, timeout_s=5,
                              structured_output=StructuredOutput(mode))
    try:
        await provider.complete(request("local-model", output_schema=SCHEMA))
    finally:
        await provider.aclose()
    assert llm_server.requests[-1]["response_format"] == expected


async def test_tool_mode_reads_the_tool_call_arguments(llm_server):
    llm_server.responder = None
    provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url, timeout_s=5,
                              structured_output=StructuredOutput.TOOL)
    try:
        await provider.complete(request("local-model", output_schema=SCHEMA))
    finally:
        await provider.aclose()
    body = llm_server.requests[-1]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "output"}}
    assert body["tools"][0]["function"]["parameters"] == SCHEMA


async def test_anthropic_uses_native_output_config_where_the_model_takes_it(anthropic, llm_server):
    answer = await anthropic.complete(request("claude-sonnet-5-5", output_schema=SCHEMA))
    body = llm_server.requests[-1]
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert "tool_choice" not in body  # sonnet-5-5 refuses forced tools
    assert json.loads(answer.text) == {"sentiment": "positive"}


# ---------------------------------------------------------------- adapting to refusals


async def test_a_refused_token_limit_name_is_adapted_to_once_and_remembered(compatible, llm_server):
    llm_server.script(["400:Unsupported parameter: 'max_tokens' is not supported with this "
                       "model. Use 'max_completion_tokens' instead."])
    await compatible.complete(request("my-azure-deployment", max_tokens=40))
    first, second = llm_server.requests[-2], llm_server.requests[-1]
    assert first["max_tokens"] == 40 and second["max_completion_tokens"] == 40
    await compatible.complete(request("my-azure-deployment", max_tokens=40))
    assert llm_server.requests[-1]["max_completion_tokens"] == 40 and llm_server.count == 3
    assert any("max_completion_tokens" in note for note in compatible.notes)


async def test_a_refused_sampling_parameter_is_dropped(compatible, llm_server):
    llm_server.script(["400:litellm.UnsupportedParamsError: anthropic does not support "
                       "parameters: ['temperature'], for model=claude-next"])
    await compatible.complete(request("claude-next", temperature=0.0))
    assert "temperature" not in llm_server.requests[-1] and llm_server.count == 2
    (learned,) = compatible.adaptations.learned
    assert learned[1] == Adaptation(AdaptationKind.DROP, "temperature", learned[1].reason)


async def test_a_server_that_refuses_json_schema_gets_the_next_mode(compatible, llm_server):
    llm_server.script(["400:unsupported response_format type json_schema"])
    await compatible.complete(request("tiny", output_schema=SCHEMA))
    assert llm_server.requests[-1]["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_a_500_adapts_only_when_it_names_the_structured_output():
    from core.llm.adaptation import refusal_adaptation

    body = {"response_format": {"type": "json_schema"}, "temperature": 0}
    # llama.cpp's server fails json_schema with a 500 that says so.
    named = ProviderError("x: HTTP 500 from u: response_format type json_schema unsupported", status=500)
    assert refusal_adaptation(named, body, StructuredOutput.JSON_SCHEMA) == Adaptation(
        AdaptationKind.STRUCTURED, "json_object_schema", "response_format type json_schema unsupported")
    plain = ProviderError("x: HTTP 500 from u: internal error, temperature", status=500)
    assert refusal_adaptation(plain, body, StructuredOutput.JSON_SCHEMA) is None


async def test_anthropic_falls_back_from_output_config_to_a_forced_tool(anthropic, llm_server):
    llm_server.script(["400:output_config: Extra inputs are not permitted"])
    answer = await anthropic.complete(request("claude-old", output_schema=SCHEMA))
    assert llm_server.requests[-1]["tool_choice"] == {"type": "tool", "name": "output"}
    assert answer.structured_output is StructuredOutput.TOOL


async def test_a_refused_user_param_is_not_dropped(compatible, llm_server):
    llm_server.script(["400:Unrecognized request argument supplied: service_tier"])
    with pytest.raises(ProviderError, match="service_tier"):
        await compatible.complete(request("gpt-4o-mini", params={"service_tier": "flex"}))
    assert llm_server.count == 1


async def test_adaptations_are_kept_in_the_store_for_later_runs(tmp_path, llm_server):
    store = await Store.open(f"sqlite:///{tmp_path / 'loom.db'}")
    try:
        first = Adaptations(load=store.load_adaptations, save=store.save_adaptation)
        provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url,
                                  timeout_s=5, adaptations=first)
        llm_server.script(["400:'temperature' does not support 0 with this model."])
        await provider.complete(request("new-model", temperature=0.0))
        await provider.aclose()
        later = Adaptations(load=store.load_adaptations, save=store.save_adaptation)
        provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url,
                                  timeout_s=5, adaptations=later)
        before = llm_server.count
        await provider.complete(request("new-model", temperature=0.0))
        await provider.aclose()
    finally:
        await store.close()
    assert llm_server.count == before + 1 and "temperature" not in llm_server.requests[-1]


# ---------------------------------------------------------------- params, headers, URLs


async def test_params_and_headers_reach_the_server_and_query_strings_survive(llm_server):
    provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url + "?api-version=2025-01-01",
                              timeout_s=5, headers={"api-key": "azure-key-0123456789",
                                                    "OpenAI-Project": "proj_1"})
    try:
        await provider.complete(request("gpt-5-mini", params={"reasoning_effort": "low",
                                                              "service_tier": "flex"}))
    finally:
        await provider.aclose()
    body = llm_server.requests[-1]
    assert body["reasoning_effort"] == "low" and body["service_tier"] == "flex"
    headers = {k.lower(): v for k, v in llm_server.headers[-1].items()}
    assert headers["api-key"] == "azure-key-0123456789" and headers["openai-project"] == "proj_1"
    assert headers["user-agent"].startswith("loom/")
    assert provider.url.endswith("/chat/completions?api-version=2025-01-01")


def test_x_should_retry_decides_before_the_status():
    import httpx

    from core.llm.transport import should_retry

    assert should_retry(500, httpx.Headers({})) and should_retry(429, httpx.Headers({}))
    assert not should_retry(500, httpx.Headers({"x-should-retry": "false"}))
    assert should_retry(400, httpx.Headers({"x-should-retry": "true"}))
    assert not should_retry(400, httpx.Headers({}))


# ---------------------------------------------------------------- truncation


async def test_a_cut_off_answer_is_asked_again_with_more_room(tmp_path, llm_server):
    from core.transform import Transformer
    from core.spec import TransformSpec
    from core.llm.client import LLMClient
    from core.llm.pricing import Pricing

    provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url, timeout_s=5)
    spec = TransformSpec(prompt="p.j2", provider="openai_compatible", base_url=llm_server.base_url,
                         model="gpt-4o-mini", max_tokens=8)
    long = '{"sentiment": "positive", "summary": "xx"}'  # 11 tokens: over 8, under 16
    transformer = Transformer(spec, LLMClient(provider, pricing=Pricing()), SCHEMA)
    try:
        result = await transformer.run([{"role": "user", "content": f"reply: {long}"}])
    finally:
        await provider.aclose()
    limits = [body.get("max_tokens") for body in list(llm_server.requests)]
    assert limits == [8, 16]  # never the same budget twice
    assert result.output["sentiment"] == "positive"


async def test_an_answer_cut_off_twice_is_named_as_truncation(llm_server):
    from core.llm.client import LLMClient
    from core.llm.pricing import Pricing
    from core.spec import TransformSpec
    from core.transform import TransformFailed, Transformer

    provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url, timeout_s=5)
    spec = TransformSpec(prompt="p.j2", provider="openai_compatible", base_url=llm_server.base_url,
                         model="gpt-4o-mini", max_tokens=2)
    long = '{"sentiment": "positive", "summary": "' + "x" * 80 + '"}'
    transformer = Transformer(spec, LLMClient(provider, pricing=Pricing()), SCHEMA)
    try:
        with pytest.raises(TransformFailed) as failed:
            await transformer.run([{"role": "user", "content": f"reply: {long}"}])
    finally:
        await provider.aclose()
    assert failed.value.error_type == "Truncated"
    assert "cut off at max_tokens=4" in str(failed.value) and "finish_reason length" in str(failed.value)
    assert llm_server.count == 2  # no repair with the same budget


# ---------------------------------------------------------------- prompt caching


async def test_anthropic_marks_the_static_prefix_for_its_prompt_cache(anthropic, llm_server):
    from core.llm.base import CachePrefix

    static = "Taxonomy:\n" + "a category of feelings. " * 300
    text = static + "Review: boils fast.\n" + ANSWER
    messages = [{"role": "system", "content": "You classify reviews."}, {"role": "user", "content": text}]
    await anthropic.complete(LLMRequest(model="claude-haiku-4-5", messages=messages,
                                        cache_prefix=CachePrefix(message=1, chars=len(static))))
    body = llm_server.requests[-1]
    assert body["system"] == [{"type": "text", "text": "You classify reviews.",
                               "cache_control": {"type": "ephemeral"}}]
    first, rest = body["messages"][0]["content"]
    assert first == {"type": "text", "text": static, "cache_control": {"type": "ephemeral"}}
    assert rest["text"].startswith("Review: boils fast.")
    await anthropic.complete(LLMRequest(model="claude-haiku-4-5", messages=messages, prompt_cache=False,
                                        cache_prefix=CachePrefix(message=1, chars=len(static))))
    assert llm_server.requests[-1]["messages"][0]["content"] == text  # opted out


def test_the_static_prefix_is_the_prompt_up_to_its_first_record_field(tmp_path):
    from core.prompt_cache import prefix_marker, static_prefix
    from core.prompts import ContextDoc, PromptSet

    context = "word " * 1000
    prompts = PromptSet(prompt_path=tmp_path / "p.j2",
                        prompt_text="Rules for {{ params.kind }}:\n{{ context.rules }}\nText: {{ input.text }}",
                        system_path=None, system_text=None,
                        contexts={"rules": ContextDoc("rules", tmp_path / "r.md", context, "h")},
                        params={"kind": "reviews"})
    index, text = static_prefix(prompts)
    assert index == 0 and text == f"Rules for reviews:\n{context}\nText: "
    messages = prompts.render({"text": "hello"})
    marker = prefix_marker(prompts)(messages)
    assert marker is not None and messages[0]["content"][:marker.chars] == text


async def test_a_gateway_serving_an_anthropic_model_gets_the_cache_marks_too(compatible, llm_server):
    from core.llm.base import CachePrefix

    static = "Taxonomy:\n" + "a category of feelings. " * 300
    messages = [{"role": "system", "content": "You classify reviews."},
                {"role": "user", "content": static + ANSWER}]
    prefix = CachePrefix(message=1, chars=len(static))
    await compatible.complete(LLMRequest(model="claude-sonnet-5-5", messages=messages, cache_prefix=prefix))
    system, user = llm_server.requests[-1]["messages"]
    assert system["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert user["content"][0] == {"type": "text", "text": static, "cache_control": {"type": "ephemeral"}}
    # A model that is not Anthropic's, behind the same kind of server: plain text, as sent.
    await compatible.complete(LLMRequest(model="llama3.1", messages=messages, cache_prefix=prefix))
    assert llm_server.requests[-1]["messages"] == messages
