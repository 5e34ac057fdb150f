"""The one masker (core.secrets_mask): its rule, and every place that must use it — the LLM
transport of both providers (after JSON decoding), stored snapshots (header values), the
resolver (environment keys) and the transform's parsed answer."""

from __future__ import annotations

import json

import pytest

from core.connectors.registry import literal_secrets, redact_override, redact_tree
from core.credentials import SecretResolver
from core.errors import ProviderError
from core.llm.anthropic import AnthropicProvider
from core.llm.base import LLMRequest
from core.llm.openai import OpenAIProvider
from core.secrets_mask import MIN_SECRET_LENGTH, SecretMasker, header_secrets
from tests.unit.test_llm_hostile_endpoints import completion, reply, serve

PLUS_KEY = "sk-ant-api03-Qm9vYmFy+ZW52aXJv+bm1lbnQ"


def escaped(payload: object) -> bytes:
    """JSON as System.Text.Json writes it by default: `+` as \\u002B."""
    return json.dumps(payload).replace("+", "\\u002B").encode()


def header_line(head: bytes, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in head.decode().split("\r\n")
                if line.lower().startswith(name + ":"))


# ---------------------------------------------------------------- the rule


def test_the_minimum_length_is_one_rule():
    masker = SecretMasker(["abc", "abcd"])
    assert MIN_SECRET_LENGTH == 4
    assert masker.mask("abc abcd") == "abc ***"


def test_quoted_forms_and_decoded_trees_are_masked():
    masker = SecretMasker(['p@ss"word/1'])
    assert masker.mask("u=p%40ss%22word%2F1") == "u=***"
    assert masker.mask('{"k": "p@ss\\"word/1"}') == '{"k": "***"}'
    tree = json.loads(json.dumps({"p@ss\"word/1": ["x p@ss\"word/1 y", 3]}))
    assert masker.mask_tree(tree) == {"***": ["x *** y", 3]}


def test_a_longer_value_holding_a_shorter_one_is_masked_whole():
    masker = SecretMasker(["key1", "key1-and-more"])
    assert masker.mask("key1-and-more") == "***"


def test_an_authorization_style_header_yields_its_credential_too():
    assert header_secrets({"Helicone-Auth": "Bearer sk-h-123456"}) == (
        "Bearer sk-h-123456", "sk-h-123456")
    assert header_secrets({"X-Key": "abc123456"}) == ("abc123456",)


def test_the_resolver_knows_the_providers_environment_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-env-0123456789")
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLUS_KEY)
    resolver = SecretResolver(use_keyring=False)
    text = resolver.redact(f"a sk-openai-env-0123456789 b {PLUS_KEY}")
    assert text == "a *** b ***"


# ---------------------------------------------------------------- stored snapshots


def test_every_header_value_is_masked_in_a_stored_snapshot_placeholders_stay():
    raw = {"transform": {"headers": {"Helicone-Auth": "Bearer sk-helicone-1",
                                     "X-Gateway": "${GATEWAY_KEY}",
                                     "Authorization": "Bearer ${TOKEN}"}},
           "evaluate": {"evaluators": [{"type": "llm_judge",
                                        "headers": {"Ocp-Apim-Subscription-Key": "apim-12345"}}]}}
    stored = redact_tree(raw)
    assert stored["transform"]["headers"] == {"Helicone-Auth": "***",
                                              "X-Gateway": "${GATEWAY_KEY}",
                                              "Authorization": "Bearer ${TOKEN}"}
    assert stored["evaluate"]["evaluators"][0]["headers"] == {"Ocp-Apim-Subscription-Key": "***"}
    assert literal_secrets(raw) >= {"Bearer sk-helicone-1", "sk-helicone-1", "apim-12345"}
    assert "${GATEWAY_KEY}" not in literal_secrets(raw)


def test_a_header_value_given_with_set_is_not_stored():
    assert redact_override("transform.headers.Helicone-Auth=Bearer sk-h") == \
        "transform.headers.Helicone-Auth=***"
    assert redact_override("transform.headers.X=${NAME}") == "transform.headers.X=${NAME}"
    assert redact_override("transform.model=gpt-4o") == "transform.model=gpt-4o"


# ---------------------------------------------------------------- the transport


def the_request() -> LLMRequest:
    return LLMRequest(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])


async def ask_anthropic(url: str, **options) -> object:
    provider = AnthropicProvider(api_key=PLUS_KEY, base_url=url, timeout_s=5, **options)
    try:
        return await provider.complete(the_request())
    finally:
        await provider.aclose()


async def test_anthropic_an_escaped_key_in_an_answer_is_masked():
    async def echo(reader, writer, head):
        sent = header_line(head, "x-api-key")
        body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": [{"type": "text", "text": f"you sent {sent}"}],
                "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 2}}
        writer.write(reply(200, escaped(body)))

    server, url = await serve(echo)
    try:
        answer = await ask_anthropic(url.removesuffix("/v1"))
    finally:
        server.close()
    text = json.dumps({"text": answer.text, "raw": answer.raw})
    assert PLUS_KEY not in text and "you sent ***" in answer.text


async def test_anthropic_an_escaped_key_in_a_401_is_masked():
    async def refuse(reader, writer, head):
        sent = header_line(head, "x-api-key")
        writer.write(reply(401, escaped({"type": "error", "error": {
            "type": "authentication_error", "message": f"invalid x-api-key {sent}"}})))

    server, url = await serve(refuse)
    try:
        with pytest.raises(ProviderError) as failed:
            await ask_anthropic(url.removesuffix("/v1"))
    finally:
        server.close()
    assert PLUS_KEY not in str(failed.value) and "invalid x-api-key ***" in str(failed.value)


async def test_only_the_credential_of_a_header_echoed_is_masked():
    secret = "sk-helicone-only-the-token-1"

    async def echo(reader, writer, head):
        token = header_line(head, "helicone-auth").split(" ", 1)[1]
        writer.write(reply(200, completion(f"token {token}")))

    server, url = await serve(echo)
    provider = OpenAIProvider(name="openai_compatible", base_url=url, api_key="k-123456789",
                              timeout_s=5, headers={"Helicone-Auth": f"Bearer {secret}"})
    try:
        answer = await provider.complete(the_request())
    finally:
        await provider.aclose()
        server.close()
    assert secret not in answer.text and answer.text == "token ***"


async def test_the_runs_masker_hides_any_resolved_secret_the_answer_echoes(monkeypatch):
    """A secret the transport never sent as a key or header (a resolved params value) is
    masked all the same: the provider masks with the run's masker."""
    monkeypatch.setenv("END_USER", "eut-resolved-for-params-42")
    resolver = SecretResolver(use_keyring=False)
    resolver.resolve("${END_USER}", where="transform.params.user")

    async def echo(reader, writer, head):
        writer.write(reply(200, completion("you are eut-resolved-for-params-42")))

    server, url = await serve(echo)
    provider = OpenAIProvider(name="openai_compatible", base_url=url, api_key="k-123456789",
                              timeout_s=5, masker=resolver.masker)
    try:
        answer = await provider.complete(the_request())
    finally:
        await provider.aclose()
        server.close()
    assert answer.text == "you are ***"
    # and the key the provider sends is now known to the run's masker (its reasons, --json)
    assert resolver.redact("k-123456789") == "***"
