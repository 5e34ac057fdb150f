"""The third-party servers the tests start answer, and behave as the real APIs would.

Plain httpx, no Loom: if these fail, the servers or their set-up are broken, not Loom.
(tests/integration/test_provider_matrix.py runs Loom through them.)
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.support.litellm_proxy import UPSTREAM_KEY, response_cost
from tests.support.llm_server import ANTHROPIC_PATH, OPENAI_PATH

REPLY = {"sentiment": "positive"}
# The first test to use a server pays for its start: LiteLLM imports for a minute or more on a
# busy 2-core machine, longer than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(600)

MESSAGES = [{"role": "system", "content": "Answer in JSON."},
            {"role": "user", "content": f"Classify this review.\nreply: {json.dumps(REPLY)}"}]


def chat(server, body, *, key=None, timeout=120.0) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers,
                      timeout=timeout)


# ---------------------------------------------------------------- LiteLLM


def test_the_proxy_answers_and_forwards_with_its_own_upstream_key(litellm_proxy, proxy_upstream):
    answer = chat(litellm_proxy, {"model": "gpt-4o-mini", "messages": MESSAGES},
                  key=litellm_proxy.api_key)
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.json()["choices"][0]["message"]["content"]) == REPLY
    assert proxy_upstream.count[OPENAI_PATH] == 1
    assert proxy_upstream.headers[0]["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_the_proxy_wants_its_master_key(litellm_proxy, proxy_upstream):
    answer = chat(litellm_proxy, {"model": "gpt-4o-mini", "messages": MESSAGES}, key="sk-wrong")
    assert answer.status_code in (400, 401), answer.text
    assert proxy_upstream.count == 0


def test_an_anthropic_model_is_translated_to_the_messages_api(litellm_proxy, proxy_upstream):
    answer = chat(litellm_proxy, {"model": "claude-haiku-4-5", "messages": MESSAGES,
                                  "max_tokens": 200}, key=litellm_proxy.api_key)
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.json()["choices"][0]["message"]["content"]) == REPLY
    assert proxy_upstream.count[ANTHROPIC_PATH] == 1 and proxy_upstream.count[OPENAI_PATH] == 0
    sent, headers = proxy_upstream.requests[0], proxy_upstream.headers[0]
    assert headers["x-api-key"] == UPSTREAM_KEY and headers["anthropic-version"]
    assert sent["max_tokens"] == 200
    assert all(m["role"] != "system" for m in sent["messages"])  # the system turn moved out
    assert "Answer in JSON." in json.dumps(sent["system"])


@pytest.mark.parametrize("model", ["claude-opus-4-7", "claude-sonnet-5-5"])
def test_the_proxy_refuses_temperature_0_where_the_model_data_says_so(litellm_proxy, proxy_upstream,
                                                                       model):
    answer = chat(litellm_proxy, {"model": model, "messages": MESSAGES, "temperature": 0,
                                  "max_tokens": 200}, key=litellm_proxy.api_key)
    assert answer.status_code == 400, answer.text
    assert "temperature" in answer.json()["error"]["message"]
    assert proxy_upstream.count == 0  # refused by the proxy itself, as the vendor would


def test_the_proxy_refuses_temperature_0_for_an_openai_reasoning_model(litellm_proxy, proxy_upstream):
    answer = chat(litellm_proxy, {"model": "gpt-6-sol", "messages": MESSAGES, "temperature": 0},
                  key=litellm_proxy.api_key)
    assert answer.status_code == 400, answer.text
    assert "temperature" in answer.json()["error"]["message"]
    assert proxy_upstream.count == 0


def test_the_proxy_puts_its_cost_on_the_response(litellm_proxy, proxy_upstream):
    answer = chat(litellm_proxy, {"model": "gpt-4o-mini", "messages": MESSAGES},
                  key=litellm_proxy.api_key)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    # gpt-4o-mini in LiteLLM's bundled price data: $0.15 / $0.60 per million tokens.
    expected = usage["prompt_tokens"] * 0.15e-6 + usage["completion_tokens"] * 0.6e-6
    assert response_cost(answer.headers) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- llama-cpp-python

SCHEMA = {
    "type": "object",
    "required": ["sentiment", "score", "summary", "flagged", "tags"],
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number"},
        "summary": {"type": "string"},
        "flagged": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def test_the_llama_server_answers_a_chat_completion(llama_server):
    answer = chat(llama_server, {"model": llama_server.model, "max_tokens": 16,
                                 "messages": [{"role": "user", "content": "Say something."}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["prompt_tokens"] > 0


def test_json_object_with_a_schema_yields_json_that_matches_it(llama_server):
    answer = chat(llama_server, {"model": llama_server.model, "max_tokens": 200,
                                 "messages": [{"role": "user", "content": "Classify, as JSON."}],
                                 "response_format": {"type": "json_object", "schema": SCHEMA}})
    assert answer.status_code == 200, answer.text
    jsonschema.validate(json.loads(answer.json()["choices"][0]["message"]["content"]), SCHEMA)


def test_json_object_without_a_schema_yields_a_json_object(llama_server):
    answer = chat(llama_server, {"model": llama_server.model, "max_tokens": 200,
                                 "messages": [{"role": "user", "content": "Answer in JSON."}],
                                 "response_format": {"type": "json_object"}})
    assert answer.status_code == 200, answer.text
    assert isinstance(json.loads(answer.json()["choices"][0]["message"]["content"]), dict)


def test_json_schema_response_format_is_refused_with_a_500_on_this_version(llama_server):
    # What users report and why Loom needs a structured-output mode for openai_compatible:
    # llama-cpp-python 0.3.36's server validates response_format.type as 'text' or
    # 'json_object' only, and answers OpenAI's json_schema with an HTTP 500, not a 400.
    answer = chat(llama_server, {"model": llama_server.model, "max_tokens": 50,
                                 "messages": [{"role": "user", "content": "Classify, as JSON."}],
                                 "response_format": {"type": "json_schema", "json_schema": {
                                     "name": "output", "schema": SCHEMA, "strict": True}}})
    assert answer.status_code == 500, answer.text
    assert "Input should be 'text' or 'json_object'" in answer.json()["error"]["message"]
