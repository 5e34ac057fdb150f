"""AnthropicProvider against the loopback server's Messages API."""

from __future__ import annotations

import json

import pytest

from core.errors import ProviderError, SecretError
from core.llm.anthropic import DEFAULT_BASE_URL, DEFAULT_MAX_TOKENS, AnthropicProvider
from core.llm.base import LLMRequest, StructuredOutput
from core.llm.client import LLMClient
from core.llm.pricing import Pricing
from tests.support.llm_server import LLMServer

# Once on each HTTP transport (tests/conftest.py `http_transport`).
pytestmark = pytest.mark.usefixtures("http_transport")


@pytest.fixture
def llm_server():
    # Same as the shared conftest fixture; kept here so these tests stand on their own.
    with LLMServer(latency_s=0.0, seed=7, strict=True) as server:
        yield server


SCHEMA = {"type": "object", "required": ["sentiment"],
          "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}}}
KEY = "sk-ant-test-0123456789"


def request(text: str = 'Classify.\nreply: {"sentiment": "negative"}', **fields) -> LLMRequest:
    fields.setdefault("model", "claude-haiku-4-5")
    return LLMRequest(messages=[{"role": "system", "content": "You classify reviews."},
                                {"role": "user", "content": text}], **fields)


@pytest.fixture
async def provider(llm_server):
    llm_server.api_key = KEY
    provider = AnthropicProvider(api_key=KEY, base_url=llm_server.anthropic_base_url, timeout_s=5)
    yield provider
    await provider.aclose()


async def test_structured_output_goes_through_a_forced_tool(provider, llm_server):
    provider.configured_structure = StructuredOutput.TOOL
    answer = await provider.complete(request(output_schema=SCHEMA, temperature=0.1, top_p=0.5))
    body = llm_server.requests[-1]
    assert body["system"] == [{"type": "text", "text": "You classify reviews."}]
    assert body["messages"] == [{"role": "user", "content": 'Classify.\nreply: {"sentiment": "negative"}'}]
    assert body["tools"] == [{"name": "output", "description": "Return the answer.", "input_schema": SCHEMA}]
    assert body["tool_choice"] == {"type": "tool", "name": "output"}
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert (body["temperature"], body["top_p"]) == (0.1, 0.5)
    headers = {k.lower(): v for k, v in llm_server.headers[-1].items()}
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert llm_server.count["/v1/messages"] == 1
    assert json.loads(answer.text) == {"sentiment": "negative"}
    assert answer.finish_reason == "tool_use"


async def test_plain_text_answers_and_usage(provider, llm_server):
    llm_server.cached_tokens = 4
    answer = await provider.complete(request("Say hi.\nreply: hello there", max_tokens=100))
    body = llm_server.requests[-1]
    assert "tools" not in body and body["max_tokens"] == 100
    assert answer.text == "hello there"
    prompt = "You classify reviews." + "Say hi.\nreply: hello there"
    assert answer.input_tokens == len(prompt) // 4 + 1  # cache reads included
    assert answer.cached_tokens == 4
    assert answer.output_tokens == len("hello there") // 4 + 1
    assert answer.finish_reason == "end_turn"
    assert answer.model == "claude-haiku-4-5"


async def test_json_mode_forces_an_open_object_tool(provider, llm_server):
    answer = await provider.complete(request(json_mode=True))
    assert llm_server.requests[-1]["tools"][0]["input_schema"] == {"type": "object"}
    assert json.loads(answer.text) == {"sentiment": "negative"}


@pytest.mark.parametrize("action, status", [("529", 529), ("500", 500), ("429:2", 429)])
async def test_overload_and_rate_limits_are_retryable(provider, llm_server, action, status):
    llm_server.script([action])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    assert caught.value.retryable is True and caught.value.status == status
    if status == 529:
        assert "Overloaded" in str(caught.value)
    if status == 429:
        assert caught.value.retry_after == 2.0


async def test_a_bad_request_is_final_and_quotes_the_api(provider, llm_server):
    llm_server.script(["400:messages: roles must alternate"])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    assert caught.value.retryable is False
    assert "messages: roles must alternate" in str(caught.value)


async def test_an_empty_answer_is_retryable(provider, llm_server):
    llm_server.script(["empty"])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    assert caught.value.retryable is True


async def test_the_client_retries_and_prices_anthropic_calls(llm_server):
    llm_server.script(["529", "ok"])
    provider = AnthropicProvider(api_key=KEY, base_url=llm_server.anthropic_base_url)

    async def no_wait(seconds: float) -> None:
        pass

    async with LLMClient(provider, pricing=Pricing(), sleep=no_wait) as client:
        response, call = await client.complete(request(model="claude-haiku-4-5-20251001"))
    assert call.attempts == 2 and call.provider == "anthropic"
    assert call.cost_usd == pytest.approx((response.input_tokens * 1.0 + response.output_tokens * 5.0) / 1e6)


async def test_key_and_base_url_from_the_environment(llm_server, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(SecretError, match="ANTHROPIC_API_KEY"):
        AnthropicProvider()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    default = AnthropicProvider()
    assert default.base_url == DEFAULT_BASE_URL
    await default.aclose()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", llm_server.anthropic_base_url)
    provider = AnthropicProvider()
    try:
        assert (await provider.complete(request())).text
    finally:
        await provider.aclose()
