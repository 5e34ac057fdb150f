"""make_provider: the pipeline's transform: block decides which provider is built."""

from __future__ import annotations

import json

import pytest
import yaml

from core.errors import SecretError
from core.llm.anthropic import AnthropicProvider
from core.llm.base import LLMRequest
from core.llm.factory import make_provider
from core.llm.openai import OpenAIProvider
from core.llm.replay import ReplayProvider
from core.spec import load_spec
from tests.support.llm_server import LLMServer


@pytest.fixture
def llm_server():
    # Same as the shared conftest fixture; kept here so these tests stand on their own.
    with LLMServer(latency_s=0.0, seed=7, strict=True) as server:
        yield server


def write_pipeline(folder, **transform):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.j2").write_text("Classify: {{ input.text }}\n", encoding="utf-8")
    (folder / "reviews.csv").write_text("id,text\n1,great\n", encoding="utf-8")
    settings = {"prompt": "prompt.j2", "provider": "openai_compatible", "model": "gpt-4o-mini",
                "base_url": "http://127.0.0.1:9/v1", **transform}
    spec = {"name": "factory_test", "extract": {"source": "csv://reviews.csv", "id_field": "id"},
            "transform": {k: v for k, v in settings.items() if v is not None},
            "load": {"destination": "jsonl://out/results.jsonl"}}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def loaded(tmp_path, **transform):
    return load_spec(write_pipeline(tmp_path / "p", **transform))


async def test_openai_compatible_uses_the_pipelines_base_url_and_key(tmp_path, llm_server):
    spec = loaded(tmp_path, base_url=llm_server.base_url, concurrency=40, timeout_s=7)
    provider = make_provider(spec.spec.transform, spec, api_key="resolved-key-123",
                             base_url=llm_server.base_url)
    try:
        assert isinstance(provider, OpenAIProvider)
        assert (provider.name, provider.base_url, provider.timeout_s) == \
            ("openai_compatible", llm_server.base_url, 7)
        assert len(provider._pools.pools) == 2  # 40 in flight over pools of 32 connections
        await provider.complete(LLMRequest(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "hi"}]))
        headers = {k.lower(): v for k, v in llm_server.headers[-1].items()}
        assert headers["authorization"] == "Bearer resolved-key-123"
    finally:
        await provider.aclose()


async def test_openai_without_any_key_is_a_secret_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = loaded(tmp_path, provider="openai", base_url=None, api_key="${OPENAI_API_KEY}")
    with pytest.raises(SecretError, match="OPENAI_API_KEY"):
        # An unresolved placeholder is never sent as the key.
        make_provider(spec.spec.transform, spec, api_key=None, base_url=None)


async def test_replay_reads_the_cassette_next_to_the_pipeline(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "cassettes").mkdir()
    (folder / "cassettes" / "demo.jsonl").write_text(
        json.dumps({"loom_cassette": 1, "note": "hand written", "created_at": "2026-01-01"}) + "\n")
    spec = load_spec(write_pipeline(folder, provider="replay", cassette="cassettes/demo.jsonl",
                                    base_url=None))
    provider = make_provider(spec.spec.transform, spec, api_key=None, base_url=None)
    assert isinstance(provider, ReplayProvider)
    assert provider.path == folder / "cassettes" / "demo.jsonl"


async def test_anthropic_is_built_with_its_own_key(tmp_path, llm_server, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    spec = loaded(tmp_path, provider="anthropic", model="claude-haiku-4-5", base_url=None,
                  api_key="${ANTHROPIC_API_KEY}")
    with pytest.raises(SecretError, match="ANTHROPIC_API_KEY"):
        make_provider(spec.spec.transform, spec, api_key=None, base_url=None)
    provider = make_provider(spec.spec.transform, spec, api_key="sk-ant-resolved",
                             base_url=llm_server.anthropic_base_url)
    try:
        assert isinstance(provider, AnthropicProvider)
        answer = await provider.complete(LLMRequest(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "reply: fine"}]))
        assert answer.text == "fine"
    finally:
        await provider.aclose()
