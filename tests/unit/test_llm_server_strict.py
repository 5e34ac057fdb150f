"""The loopback server's strict mode: what the real APIs reject gets their error, what the
official SDKs send gets a 200.

Accepted bodies are built by the `openai` and `anthropic` SDKs themselves (pointed at the
strict server), so a rule that would refuse the SDK's own request shape fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import openai
import pydantic
import pytest

from tests.support.llm_server import ANTHROPIC_PATH, OPENAI_PATH, LLMServer

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "llm_server.py"
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def shared():
    # The budget knob is on throughout: models that always think need max_tokens >= 1000 here.
    with LLMServer(strict=True, reasoning_spends_budget_below=1000) as server:
        yield server


@pytest.fixture()
def server(shared):
    shared.reset()
    yield shared


_CLIENTS: dict = {}  # building an SDK client is slow; one of each per server


def oai(server: LLMServer):
    key = ("openai", server.port)
    if key not in _CLIENTS:
        _CLIENTS[key] = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    return _CLIENTS[key]


def claude(server: LLMServer):
    key = ("anthropic", server.port)
    if key not in _CLIENTS:
        _CLIENTS[key] = anthropic.Anthropic(base_url=server.anthropic_base_url,
                                            api_key="sk-ant-test", max_retries=0)
    return _CLIENTS[key]


def post_openai(server: LLMServer, **body) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "reply: ok"}])
    return httpx.post(server.url + OPENAI_PATH, json=body, timeout=10)


def post_anthropic(server: LLMServer, headers: dict | None = None, **body) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "reply: ok"}])
    return httpx.post(server.url + ANTHROPIC_PATH, json=body, timeout=10,
                      headers={**ANTHROPIC_HEADERS, **(headers or {})})


def openai_error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


def anthropic_error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    return body["error"]["message"]


class Review(pydantic.BaseModel):
    sentiment: str
    note: str | None = None


REVIEW = 'reply: {"sentiment": "positive", "note": null}'

# ---------------------------------------------------------------- OpenAI: reasoning models

REASONING = ["o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-mini", "gpt-5.5-2026-04-23",
             "gpt-6-sol", "gpt-6.1-sol"]


@pytest.mark.parametrize("model", REASONING)
def test_reasoning_models_refuse_a_temperature_other_than_1(server, model):
    error = openai_error(post_openai(server, model=model, temperature=0))
    assert error == {"message": "Unsupported value: 'temperature' does not support 0 with this "
                                "model. Only the default (1) value is supported.",
                     "type": "invalid_request_error", "param": "temperature",
                     "code": "unsupported_value"}
    answer = oai(server).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "reply: fine"}], temperature=1)
    assert answer.choices[0].message.content == "fine"


def test_reasoning_models_refuse_max_tokens_and_take_what_the_sdk_sends_instead(server):
    error = openai_error(post_openai(server, model="gpt-5-mini", max_tokens=50))
    assert error == {"message": "Unsupported parameter: 'max_tokens' is not supported with this "
                                "model. Use 'max_completion_tokens' instead.",
                     "type": "invalid_request_error", "param": "max_tokens",
                     "code": "unsupported_parameter"}
    answer = oai(server).chat.completions.create(
        model="gpt-5-mini", messages=[{"role": "user", "content": "reply: ok"}],
        max_completion_tokens=2000, reasoning_effort="low", service_tier="flex")
    assert answer.choices[0].message.content == "ok"
    assert answer.usage.completion_tokens_details.reasoning_tokens == 0
    sent = server.requests[-1]
    assert (sent["max_completion_tokens"], sent["reasoning_effort"], sent["service_tier"]) == \
        (2000, "low", "flex")


@pytest.mark.parametrize("param, value", [("top_p", 0.9), ("presence_penalty", 0.5),
                                          ("logprobs", True)])
def test_reasoning_models_refuse_other_sampling_knobs(server, param, value):
    error = openai_error(post_openai(server, model="o3", **{param: value}))
    assert error["message"] == f"Unsupported parameter: '{param}' is not supported with this model."
    assert (error["param"], error["code"]) == (param, "unsupported_parameter")


def test_chat_models_take_sampling_parameters_and_refuse_reasoning_effort(server):
    answer = oai(server).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "reply: ok"}],
        temperature=0, top_p=0.5, max_tokens=50, seed=3)
    assert answer.choices[0].message.content == "ok"
    assert answer.usage.completion_tokens_details is None
    error = openai_error(post_openai(server, model="gpt-4o-mini", reasoning_effort="low"))
    assert (error["param"], error["code"]) == ("reasoning_effort", "unsupported_parameter")


def test_bad_values_of_known_parameters_are_named(server):
    error = openai_error(post_openai(server, model="gpt-5", reasoning_effort="huge"))
    assert error["message"].startswith("Invalid value: 'huge'. Supported values are: 'none',")
    assert (error["param"], error["code"]) == ("reasoning_effort", "invalid_value")
    error = openai_error(post_openai(server, model="gpt-5", service_tier="cheap"))
    assert error["param"] == "service_tier"


def test_temperature_stays_within_its_range(server):
    error = openai_error(post_openai(server, model="gpt-4o-mini", temperature=2.5))
    assert error["message"] == ("Invalid 'temperature': decimal above maximum value. Expected a "
                                "value <= 2, but got 2.5 instead.")
    assert (error["param"], error["code"]) == ("temperature", "decimal_above_max_value")
    assert post_openai(server, model="gpt-4o-mini", temperature=2).status_code == 200
    assert anthropic_error(post_anthropic(server, model="claude-haiku-4-5", max_tokens=5,
                                          temperature=1.5)) == \
        "temperature: Input should be less than or equal to 1"


def test_unknown_body_keys_are_unrecognized(server):
    error = openai_error(post_openai(server, model="gpt-4o-mini", cache_control={"x": 1}))
    assert error == {"message": "Unrecognized request argument supplied: cache_control",
                     "type": "invalid_request_error", "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as caught:
        oai(server).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
            extra_body={"top_k": 3})
    assert caught.value.body["message"] == "Unrecognized request argument supplied: top_k"


# ---------------------------------------------------------------- OpenAI: response_format


def schema_format(schema: dict, strict: bool = True, name: str = "output") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                   "strict": strict}}


def test_the_sdks_strict_schema_passes_and_the_answer_still_comes_from_reply(server):
    parsed = oai(server).chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": REVIEW}],
        response_format=Review)
    assert parsed.choices[0].message.parsed == Review(sentiment="positive", note=None)
    sent = server.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["required"] == ["sentiment", "note"]


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
     "In context=(), 'additionalProperties' is required to be supplied and to be false."),
    ({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
      "required": ["a"], "additionalProperties": False},
     "In context=(), 'required' is required to be supplied and to be an array including every "
     "key in properties. Missing 'b'."),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {
        "type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}}},
      "required": ["a"], "additionalProperties": False},
     "In context=('properties', 'a', 'items'), 'additionalProperties' is required to be "
     "supplied and to be false."),
    ({"type": "object", "properties": {"a": {"type": "string", "minLength": 2}},
      "required": ["a"], "additionalProperties": False},
     "In context=('properties', 'a'), 'minLength' is not permitted."),
    ({"type": "object", "properties": {"a": {"allOf": [{"type": "string"}]}},
      "required": ["a"], "additionalProperties": False},
     "In context=('properties', 'a'), 'allOf' is not permitted."),
    ({"type": "object", "properties": {}, "required": [], "additionalProperties": False,
      "patternProperties": {"^x": {"type": "string"}}},
     "In context=(), 'patternProperties' is not permitted."),
])
def test_strict_schemas_follow_the_structured_outputs_rules(server, schema, message):
    error = openai_error(post_openai(server, model="gpt-4o-mini",
                                     response_format=schema_format(schema)))
    assert error["message"] == "Invalid schema for response_format 'output': " + message
    assert error["param"] == "response_format"
    # The same schema without strict is a hint, not a contract: accepted.
    assert post_openai(server, model="gpt-4o-mini",
                       response_format=schema_format(schema, strict=False)).status_code == 200


def test_strict_schemas_may_use_the_supported_keywords(server):
    schema = {"type": "object", "additionalProperties": False,
              "required": ["n", "when", "tags", "kind"],
              "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9},
                             "when": {"type": "string", "format": "date-time"},
                             "tags": {"type": "array", "items": {"type": "string",
                                                                 "pattern": "^[a-z]+$"},
                                      "minItems": 1, "maxItems": 3},
                             "kind": {"anyOf": [{"type": "string", "enum": ["a", "b"]},
                                                {"type": "null"}]}}}
    assert post_openai(server, model="gpt-5-mini",
                       response_format=schema_format(schema)).status_code == 200


@pytest.mark.parametrize("strict", [True, False])
def test_a_non_object_root_is_refused_even_without_strict(server, strict):
    error = openai_error(post_openai(server, model="gpt-4o-mini", response_format=schema_format(
        {"type": "array", "items": {"type": "string"}}, strict=strict)))
    assert error["message"] == ("Invalid schema for response_format 'output': schema must be a "
                                "JSON Schema of 'type: \"object\"', got 'type: \"array\"'.")


def test_a_schema_name_must_be_a_plain_identifier(server):
    error = openai_error(post_openai(server, model="gpt-4o-mini", response_format=schema_format(
        {"type": "object", "properties": {}, "additionalProperties": False}, name="my schema")))
    assert error["param"] == "response_format.json_schema.name"


def test_json_mode_needs_the_word_json_in_the_messages(server):
    error = openai_error(post_openai(server, model="gpt-4o-mini",
                                     response_format={"type": "json_object"}))
    assert error["message"] == ("'messages' must contain the word 'json' in some form, to use "
                                "'response_format' of type 'json_object'.")
    assert error["param"] == "messages"
    answer = oai(server).chat.completions.create(
        model="gpt-4o-mini", response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "Answer in JSON."},
                  {"role": "user", "content": 'reply: {"a": 1}'}])
    assert json.loads(answer.choices[0].message.content) == {"a": 1}


# ---------------------------------------------------------------- OpenAI: caching, budgets


def test_a_shared_prefix_of_1024_tokens_is_reported_as_cached(server):
    context = "taxonomy line. " * 400  # 6000 chars: 1500 tokens
    client = oai(server)

    def ask(model: str, record: str):
        return client.chat.completions.create(model=model, messages=[
            {"role": "system", "content": context},
            {"role": "user", "content": f"record {record}\nreply: ok"}]).usage

    assert ask("gpt-4o-mini", "1").prompt_tokens_details.cached_tokens == 0
    second = ask("gpt-4o-mini", "2")
    cached = second.prompt_tokens_details.cached_tokens
    assert 1024 <= cached <= second.prompt_tokens and cached % 128 == 0
    assert cached == 1408  # 1500 tokens of shared prefix, in 128-token steps past 1024
    assert ask("gpt-4.1", "3").prompt_tokens_details.cached_tokens == 0  # per model
    short = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "reply: short"}]).usage
    assert short.prompt_tokens_details.cached_tokens == 0


def test_reasoning_can_spend_the_whole_budget(server):
    client = oai(server)
    answer = client.chat.completions.create(
        model="gpt-5-mini", max_completion_tokens=300,
        messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert answer.choices[0].message.content == ""
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 300
    assert answer.usage.completion_tokens_details.reasoning_tokens == 300
    roomy = client.chat.completions.create(
        model="gpt-5-mini", max_completion_tokens=4000,
        messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert roomy.choices[0].message.content == '{"a": 1}'
    chat = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=300,
        messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert chat.choices[0].message.content == '{"a": 1}'


# ---------------------------------------------------------------- Anthropic: the body


def test_messages_need_max_tokens_and_no_unknown_keys(server):
    assert anthropic_error(post_anthropic(server, model="claude-haiku-4-5")) == \
        "max_tokens: Field required"
    assert anthropic_error(post_anthropic(server, model="claude-haiku-4-5", max_tokens=10,
                                          response_format={"type": "json_object"})) == \
        "response_format: Extra inputs are not permitted"
    message = claude(server).messages.create(
        model="claude-haiku-4-5", max_tokens=50, system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "reply: ok"}], stop_sequences=["\n\n"],
        metadata={"user_id": "u1"})
    assert message.content[0].text == "ok"


def test_system_goes_top_level_not_in_the_messages(server):
    message = anthropic_error(post_anthropic(server, model="claude-haiku-4-5", max_tokens=5,
                                             messages=[{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "hi"}]))
    assert message.startswith('messages: Unexpected role "system".')


def test_flags_set_after_start_take_effect():
    with LLMServer() as later:
        assert post_openai(later, model="o3", temperature=0).status_code == 200
        later.strict = True
        assert post_openai(later, model="o3", temperature=0).status_code == 400
        later.reasoning_spends_budget_below = 100
        spent = post_openai(later, model="o3", max_completion_tokens=10).json()
        assert spent["choices"][0]["finish_reason"] == "length"


FIXED = ["claude-opus-4-7", "claude-opus-4-7-20260416", "claude-opus-4-8", "claude-opus-5",
         "claude-opus-5-5", "claude-sonnet-5", "claude-sonnet-5-5", "claude-haiku-5-5",
         "claude-fable-5", "claude-fable-5-1", "claude-mythos-5", "claude-mythos-5-1"]


@pytest.mark.parametrize("model", FIXED)
def test_fixed_sampling_models_refuse_temperature_top_p_and_top_k(server, model):
    for param, value in (("temperature", 0), ("temperature", 0.7), ("top_p", 0.9), ("top_k", 5)):
        with pytest.raises(anthropic.BadRequestError) as caught:
            claude(server).messages.create(model=model, max_tokens=20, extra_body={param: value},
                                           messages=[{"role": "user", "content": "x"}])
        assert caught.value.body["error"]["message"] == f"`{param}` is deprecated for this model."
    assert post_anthropic(server, model=model, max_tokens=20, temperature=1).status_code == 200


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-5-20250929",
                                   "claude-opus-4-6", "claude-3-5-haiku-20241022", "m"])
def test_older_models_take_sampling_parameters(server, model):
    message = claude(server).messages.create(
        model=model, max_tokens=20, messages=[{"role": "user", "content": "reply: ok"}],
        extra_body={"temperature": 0, "top_p": 0.9, "top_k": 5})
    assert message.content[0].text == "ok"


TOOL = {"name": "answer", "description": "Return the answer.",
        "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}


@pytest.mark.parametrize("model", ["claude-sonnet-5-5", "claude-opus-5-5", "claude-fable-5-1",
                                   "claude-mythos-5-1"])
def test_some_models_refuse_a_forced_tool(server, model):
    for choice in ({"type": "tool", "name": "answer"}, {"type": "any"}):
        message = anthropic_error(post_anthropic(server, model=model, max_tokens=50,
                                                 tools=[TOOL], tool_choice=choice))
        assert message == 'tool_choice: type "tool" and "any" are not supported for this model.'
    auto = claude(server).messages.create(
        model=model, max_tokens=2000, tools=[TOOL], tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert auto.stop_reason == "tool_use"


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-opus-4-7", "claude-sonnet-5",
                                   "claude-haiku-5-5", "claude-fable-5"])
def test_other_models_take_a_forced_tool(server, model):
    message = claude(server).messages.create(
        model=model, max_tokens=50, tools=[TOOL], tool_choice={"type": "tool", "name": "answer"},
        messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert message.content[0].type == "tool_use" and message.content[0].input == {"a": 1}


def test_a_tool_input_schema_must_be_an_object(server):
    tool = {**TOOL, "input_schema": {"type": "array", "items": {"type": "string"}}}
    assert anthropic_error(post_anthropic(server, model="claude-haiku-4-5", max_tokens=50,
                                          tools=[tool])) == \
        "tools.0.custom.input_schema.type: Input should be 'object'"


def test_a_forced_tool_with_thinking_on_is_refused(server):
    assert anthropic_error(post_anthropic(
        server, model="claude-opus-4-6", max_tokens=2000, tools=[TOOL],
        tool_choice={"type": "any"}, thinking={"type": "enabled", "budget_tokens": 1024})) == \
        "Thinking may not be enabled when tool_choice forces tool use."


# ---------------------------------------------------------------- Anthropic: structured output


def test_native_structured_output_is_what_the_sdk_sends(server):
    parsed = claude(server).messages.parse(
        model="claude-sonnet-5-5", max_tokens=2000, output_format=Review,
        messages=[{"role": "user", "content": REVIEW}])
    assert parsed.parsed_output == Review(sentiment="positive", note=None)
    sent = server.requests[-1]
    assert "output_format" not in sent
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert sent["output_config"]["format"]["schema"]["type"] == "object"
    assert "anthropic-beta" not in {k.lower() for k in server.headers[-1]}
    plain = claude(server).messages.create(
        model="claude-haiku-4-5", max_tokens=200, messages=[{"role": "user", "content": REVIEW}],
        output_config={"format": {"type": "json_schema", "schema": {
            "type": "object", "properties": {"sentiment": {"type": "string"}}}}})
    assert plain.content[0].type == "text"
    assert json.loads(plain.content[0].text)["sentiment"] == "positive"


@pytest.mark.parametrize("model", ["claude-3-5-haiku-20241022", "claude-3-7-sonnet-20250219",
                                   "claude-sonnet-4-20250514"])
def test_models_without_native_schema_output_refuse_it(server, model):
    message = anthropic_error(post_anthropic(
        server, model=model, max_tokens=50,
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}))
    assert message == f"'{model}' does not support structured outputs (output_config.format)."


def test_a_non_object_root_schema_is_refused(server):
    message = anthropic_error(post_anthropic(
        server, model="claude-sonnet-5-5", max_tokens=50,
        output_config={"format": {"type": "json_schema", "schema": {"type": "array"}}}))
    assert message.startswith("output_config.format.schema: the root of an output schema")


def test_the_old_beta_output_format_needs_its_header(server):
    fmt = {"type": "json_schema", "schema": {"type": "object"}}
    message = anthropic_error(post_anthropic(server, model="claude-sonnet-4-5", max_tokens=50,
                                             output_format=fmt))
    assert message.startswith("output_format: This field is deprecated. Use "
                              "'output_config.format' instead.")
    answer = post_anthropic(server, model="claude-sonnet-4-5", max_tokens=50, output_format=fmt,
                            headers={"anthropic-beta": "structured-outputs-2025-11-13"})
    assert answer.status_code == 200 and answer.json()["content"][0]["type"] == "text"


# ---------------------------------------------------------------- Anthropic: prompt caching


def cached_request(client, model: str, record: str, context: str, **control):
    return client.messages.create(
        model=model, max_tokens=50,
        system=[{"type": "text", "text": "You classify reviews."},
                {"type": "text", "text": context,
                 "cache_control": {"type": "ephemeral", **control}}],
        messages=[{"role": "user", "content": f"record {record}\nreply: ok"}]).usage


def test_a_breakpoint_writes_the_prefix_once_then_reads_it(server):
    context = "taxonomy line. " * 600  # 9000 chars: 2250 tokens
    client = claude(server)
    first = cached_request(client, "claude-sonnet-4-5", "1", context)
    prefix = len("You classify reviews." + context) // 4
    assert first.cache_creation_input_tokens == prefix
    assert first.cache_creation.ephemeral_5m_input_tokens == prefix
    assert first.cache_creation.ephemeral_1h_input_tokens == 0
    assert first.cache_read_input_tokens == 0
    second = cached_request(client, "claude-sonnet-4-5", "2", context)
    assert second.cache_read_input_tokens == prefix
    assert second.cache_creation_input_tokens == 0
    total = len("You classify reviews." + context + "record 2\nreply: ok") // 4 + 1
    assert second.input_tokens == total - prefix
    hour = cached_request(client, "claude-opus-4-7", "3", context, ttl="1h")
    assert hour.cache_creation.ephemeral_1h_input_tokens == prefix
    assert hour.cache_read_input_tokens == 0  # another model, another cache


def test_a_prefix_below_the_models_minimum_is_not_cached(server):
    context = "taxonomy line. " * 600  # 2250 tokens: enough for Sonnet, not for Haiku 4.5
    client = claude(server)
    for record in ("1", "2"):
        usage = cached_request(client, "claude-haiku-4-5", record, context)
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    short = cached_request(client, "claude-sonnet-4-5", "1", "tiny")
    assert short.cache_creation_input_tokens == 0


def test_top_level_cache_control_caches_up_to_the_last_block(server):
    text = "a long shared document. " * 300  # 7200 chars: 1800 tokens
    client = claude(server)
    calls = [client.messages.create(model="claude-sonnet-4-6", max_tokens=20,
                                    cache_control={"type": "ephemeral"},
                                    messages=[{"role": "user", "content": text + "reply: ok"}])
             for _ in range(2)]
    assert calls[0].usage.cache_creation_input_tokens == len(text + "reply: ok") // 4
    assert calls[1].usage.cache_read_input_tokens == len(text + "reply: ok") // 4


def test_at_most_four_breakpoints(server):
    blocks = [{"type": "text", "text": f"part {n}", "cache_control": {"type": "ephemeral"}}
              for n in range(5)]
    assert anthropic_error(post_anthropic(server, model="claude-sonnet-4-5", max_tokens=10,
                                          system=blocks)) == \
        "A maximum of 4 blocks with cache_control may be provided. Found 5."


def test_reasoning_spends_the_budget_on_models_that_always_think(server):
    client = claude(server)
    spent = client.messages.create(model="claude-sonnet-5-5", max_tokens=300,
                                   messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert (spent.stop_reason, spent.content[0].text) == ("max_tokens", "")
    assert spent.usage.output_tokens == 300
    thinking = client.messages.create(
        model="claude-haiku-4-5", max_tokens=300,
        thinking={"type": "enabled", "budget_tokens": 256}, messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert thinking.stop_reason == "max_tokens"
    plain = client.messages.create(model="claude-haiku-4-5", max_tokens=300,
                                   messages=[{"role": "user", "content": 'reply: {"a": 1}'}])
    assert plain.content[0].text == '{"a": 1}'


# ---------------------------------------------------------------- both


def test_headers_are_kept_so_a_user_agent_can_be_asserted(server):
    oai(server).chat.completions.create(model="gpt-4o-mini",
                                        messages=[{"role": "user", "content": "reply: ok"}])
    claude(server).messages.create(model="claude-haiku-4-5", max_tokens=10,
                                   messages=[{"role": "user", "content": "reply: ok"}])
    agents = [dict((k.lower(), v) for k, v in h.items())["user-agent"] for h in server.headers]
    assert agents == [f"OpenAI/Python {openai.__version__}",
                      f"Anthropic/Python {anthropic.__version__}"]


@pytest.mark.parametrize("action, status", [("500:noretry", 500), ("429:noretry", 429),
                                            ("429:2:noretry", 429)])
def test_noretry_faults_tell_the_sdk_not_to_retry(server, action, status):
    server.script([action])
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert server.count == 1  # the SDK obeyed the header


def test_a_retry_fault_is_retried_by_the_sdk(server):
    server.script(["503:retry"])
    client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="k", max_retries=1)
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "reply: ok"}])
    assert message.content[0].text == "ok" and server.count == 2
    server.script(["503"])
    assert post_openai(server, model="m").status_code == 503


def test_without_strict_anything_goes():
    with LLMServer() as loose:
        response = post_openai(loose, model="gpt-5", temperature=0, max_tokens=5, bogus=True)
        assert response.status_code == 200
        assert "completion_tokens_details" not in response.json()["usage"]
        assert post_anthropic(loose, model="claude-sonnet-5-5", max_tokens=5, temperature=0,
                              tools=[TOOL], tool_choice={"type": "any"}).status_code == 200


def test_the_process_mode_takes_strict():
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--port", "0", "--strict"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = process.stdout.readline().split()[1]
        url = f"http://127.0.0.1:{port}{OPENAI_PATH}"
        refused = httpx.post(url, timeout=10, json={
            "model": "o3", "temperature": 0, "messages": [{"role": "user", "content": "x"}]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "temperature"
        ok = httpx.post(url, timeout=10, json={
            "model": "o3", "messages": [{"role": "user", "content": "reply: ok"}]})
        assert ok.json()["choices"][0]["message"]["content"] == "ok"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert process.stderr.read() == ""
