"""OpenAIProvider against the loopback server: the request on the wire, the parsed answer, and
each failure mapped to a ProviderError that says whether to retry."""

from __future__ import annotations

import collections
import contextlib

import httpx
import pytest

from core.errors import PipelineError, ProviderError, SecretError
from core.llm.base import LLMRequest
from core.llm.openai import DEFAULT_BASE_URL, OpenAIProvider
from core.llm.transport import (MAX_HTTPX_POOL_CONNECTIONS, MAX_POOL_CONNECTIONS, ConnectionPools,
                                 HttpTransport)
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


def headers_of(server: LLMServer) -> dict[str, str]:
    return {k.lower(): v for k, v in server.headers[-1].items()}


def request(text: str = 'Classify.\nreply: {"sentiment": "positive"}', **fields) -> LLMRequest:
    fields.setdefault("model", "gpt-4o-mini")
    return LLMRequest(messages=[{"role": "system", "content": "You classify reviews."},
                                {"role": "user", "content": text}], **fields)


@pytest.fixture
async def provider(llm_server):
    provider = OpenAIProvider(api_key="sk-test-key-0123456789", base_url=llm_server.base_url,
                              timeout_s=5)
    yield provider
    await provider.aclose()


async def test_request_carries_messages_params_and_the_schema(provider, llm_server):
    await provider.complete(request(temperature=0.2, max_tokens=50, top_p=0.9, seed=42,
                                    output_schema=SCHEMA))
    body = llm_server.requests[-1]
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"][0] == {"role": "system", "content": "You classify reviews."}
    assert body["messages"][1]["role"] == "user"
    # The official API takes max_completion_tokens for every current model.
    assert (body["temperature"], body["max_completion_tokens"], body["top_p"], body["seed"]) == \
        (0.2, 50, 0.9, 42)
    assert "max_tokens" not in body
    # Strict mode, with the schema closed as strict mode requires.
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "strict": True, "schema": {**SCHEMA, "additionalProperties": False}}}
    assert headers_of(llm_server)["user-agent"].startswith("loom")
    headers = {k.lower(): v for k, v in llm_server.headers[-1].items()}
    assert headers["authorization"] == "Bearer sk-test-key-0123456789"
    assert llm_server.count["/v1/chat/completions"] == 1


async def test_unset_params_are_not_sent_and_json_mode_asks_for_an_object(provider, llm_server):
    # JSON mode needs the word in the prompt (the strict server refuses it otherwise, as OpenAI does).
    await provider.complete(request('Classify, in JSON.\nreply: {"sentiment": "positive"}', json_mode=True))
    body = llm_server.requests[-1]
    assert body["response_format"] == {"type": "json_object"}
    assert not {"max_tokens", "top_p", "seed"} & set(body)
    await provider.complete(request())
    assert "response_format" not in llm_server.requests[-1]


async def test_reasoning_models_get_max_completion_tokens_and_no_temperature(provider, llm_server):
    await provider.complete(request(model="o4-mini", max_tokens=64, temperature=0.0))
    body = llm_server.requests[-1]
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body and "temperature" not in body


async def test_answer_usage_and_finish_reason_are_parsed(provider, llm_server):
    llm_server.cached_tokens = 3
    answer = await provider.complete(request())
    assert answer.text == '{"sentiment": "positive"}'
    prompt = "You classify reviews." + 'Classify.\nreply: {"sentiment": "positive"}'
    assert answer.input_tokens == len(prompt) // 4 + 1
    assert answer.output_tokens == len(answer.text) // 4 + 1
    assert answer.cached_tokens == 3
    assert answer.model == "gpt-4o-mini"
    assert answer.finish_reason == "stop"
    assert answer.latency_s > 0


async def test_an_answer_cut_by_max_tokens_says_length(provider):
    answer = await provider.complete(request("reply: " + "x" * 200, max_tokens=5))
    assert answer.finish_reason == "length"
    assert len(answer.text) == 20


@pytest.mark.parametrize("action, status, retry_after", [
    ("429:7", 429, 7.0),  # Retry-After in whole seconds
    ("429:0.25", 429, 0.25),  # retry-after-ms is preferred when sent
    ("500", 500, None),
    ("529", 529, None),
])
async def test_status_failures_are_retryable_with_the_servers_hint(provider, llm_server, action,
                                                                    status, retry_after):
    llm_server.script([action])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    assert caught.value.retryable is True
    assert caught.value.status == status
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize("action, words", [
    ("malformed", "not JSON"),
    ("empty", "without choices[0].message"),
    ("reset", "connection to"),
])
async def test_broken_answers_and_resets_are_retryable(provider, llm_server, action, words):
    llm_server.script([action])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    assert caught.value.retryable is True
    assert words in str(caught.value)
    assert (await provider.complete(request())).text == '{"sentiment": "positive"}'


async def test_a_timeout_is_retryable(llm_server):
    llm_server.faults.timeout_sleep_s = 5
    llm_server.script(["timeout"])
    provider = OpenAIProvider(api_key="k", base_url=llm_server.base_url, timeout_s=0.2)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(request())
        assert caught.value.retryable is True
        assert "within 0.2s" in str(caught.value)
    finally:
        await provider.aclose()


async def test_a_client_error_is_final_and_quotes_the_api_without_the_key(provider, llm_server):
    llm_server.script(["400:Invalid schema for response_format 'output' (key sk-test-key-0123456789)"])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    error = caught.value
    assert error.retryable is False and error.status == 400
    assert "Invalid schema for response_format 'output'" in str(error)
    assert "sk-test-key-0123456789" not in str(error)
    assert "HTTP 400" in str(error) and "gpt-4o-mini" in str(error)


async def test_a_long_api_message_is_truncated(provider, llm_server):
    llm_server.script(["400:" + "very long complaint " * 100])
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request())
    assert len(str(caught.value)) < 450
    assert str(caught.value).endswith("...")


async def test_a_wrong_key_is_a_final_401(llm_server):
    llm_server.api_key = "sk-the-right-key"
    provider = OpenAIProvider(api_key="sk-a-wrong-key-42", base_url=llm_server.base_url)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(request())
        assert caught.value.status == 401 and caught.value.retryable is False
    finally:
        await provider.aclose()


async def test_missing_openai_key_is_a_secret_error_before_any_call(llm_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SecretError, match="OPENAI_API_KEY"):
        OpenAIProvider(base_url=llm_server.base_url)
    assert llm_server.count == 0


async def test_key_and_base_url_come_from_the_environment(llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.base_url + "/")
    provider = OpenAIProvider()
    try:
        assert provider.base_url == llm_server.base_url
        await provider.complete(request())
        headers = {k.lower(): v for k, v in llm_server.headers[-1].items()}
        assert headers["authorization"] == "Bearer sk-from-the-environment"
    finally:
        await provider.aclose()
    monkeypatch.delenv("OPENAI_BASE_URL")
    explicit = OpenAIProvider(api_key="sk-explicit")
    assert explicit.base_url == DEFAULT_BASE_URL
    await explicit.aclose()


async def test_openai_compatible_needs_a_base_url_and_no_key(llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak-to-other-servers")
    with pytest.raises(PipelineError, match="base_url"):
        OpenAIProvider(name="openai_compatible")
    provider = OpenAIProvider(name="openai_compatible", base_url=llm_server.base_url)
    try:
        assert (await provider.complete(request())).text
        headers = {k.lower() for k in llm_server.headers[-1]}
        assert "authorization" not in headers
    finally:
        await provider.aclose()


async def test_connection_pools_stay_small_and_requests_go_to_free_ones():
    one = ConnectionPools(concurrency=3, timeout_s=1, headers={}, transport=HttpTransport.LOOM)
    many = ConnectionPools(concurrency=100, timeout_s=1, headers={}, transport=HttpTransport.LOOM)
    try:
        assert len(one.pools) == 1 and one.pool_size == 3
        assert len(many.pools) == 4  # ceil(100 / 32)
        assert many.pool_size == MAX_POOL_CONNECTIONS == 32
        assert all(pool.max_connections == 32 for pool in many.pools)  # what the transport enforces
        with contextlib.ExitStack() as stack:
            leased = [stack.enter_context(many.lease()) for _ in range(128)]
            # Every connection of every pool is in use once, never 33 on one pool.
            assert collections.Counter(leased).most_common(1)[0][1] == 32
            assert len(set(leased[:4])) == 4
            extra = stack.enter_context(many.lease())  # past capacity: still served
            assert extra in leased
        assert len(many._free) == 128
    finally:
        await one.aclose()
        await many.aclose()


async def test_a_proxy_in_the_environment_gets_httpx_own_transport(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    proxied = ConnectionPools(concurrency=10, timeout_s=1, headers={}, url="https://api.openai.com/v1",
                              transport=HttpTransport.LOOM)
    direct = ConnectionPools(concurrency=10, timeout_s=1, headers={}, url="https://internal.example/v1",
                             transport=HttpTransport.LOOM)
    try:
        assert proxied.uses_httpx_transport and not direct.uses_httpx_transport
        assert proxied.pool_size == MAX_HTTPX_POOL_CONNECTIONS == 4 and len(proxied.pools) == 3
        assert all(isinstance(pool, httpx.AsyncClient) for pool in proxied.pools)
    finally:
        await proxied.aclose()
        await direct.aclose()


async def test_the_pipeline_chooses_httpx_own_transport(tmp_path):
    """transform.http_transport: httpx gives the provider httpx's transport, proxy or not."""
    from core.llm.factory import make_provider
    from core.spec import load_spec
    from tests.pipelines import write_pipeline

    pipeline = write_pipeline(tmp_path, rows=[{"id": "1", "text": "t"}],
                              base_url="http://127.0.0.1:9/v1", transform={"http_transport": "httpx"})
    loaded = load_spec(pipeline)
    made = make_provider(loaded.spec.transform, loaded, api_key=None, base_url=None)
    try:
        assert made._pools.uses_httpx_transport
        assert all(isinstance(pool, httpx.AsyncClient) for pool in made._pools.pools)
    finally:
        await made.aclose()


async def test_a_call_over_tls_verifies_the_server(https_server, certificate_authority,
                                                   tmp_path, monkeypatch, http_transport):
    """TLS through the provider, on each transport: the CAs it trusts (SSL_CERT_FILE here,
    certifi's bundle by default) verify the server; a server they do not vouch for is a
    retryable connection failure that names the reason, and nothing is sent."""
    bundle = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    trusted = OpenAIProvider(name="openai_compatible", base_url=https_server.base_url)
    try:
        response = await trusted.complete(request())
        assert response.text and https_server.count == 1
    finally:
        await trusted.aclose()
    monkeypatch.delenv("SSL_CERT_FILE")
    untrusted = OpenAIProvider(name="openai_compatible", base_url=https_server.base_url)
    try:
        with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await untrusted.complete(request())
        assert caught.value.retryable and https_server.count == 1
    finally:
        await untrusted.aclose()


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://example.com/v1", "http://"])
def test_a_base_url_that_is_not_http_is_a_pipeline_error(url):
    with pytest.raises(PipelineError) as caught:
        OpenAIProvider(name="openai_compatible", base_url=url)
    assert caught.value.key == "transform.base_url"
