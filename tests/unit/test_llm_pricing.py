"""Pricing: the genai-prices data looked up by where the call went, cache reads and writes at
their own prices, prompt-size tiers, user and pipeline overrides, never a made-up price."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.config import LoomConfig
from core.llm.pricing import (
    PRICES_FILE,
    SOURCE_DATA,
    SOURCE_OVERRIDE,
    ModelRate,
    Pricing,
    TokenUsage,
    fetch_price_data,
    is_local_url,
    load_fetched_snapshot,
    pipeline_prices,
)

M = 1_000_000


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return Pricing()


def test_a_current_anthropic_model_bills_cache_reads_and_both_kinds_of_write(pricing):
    # claude-opus-4-7: $5 in, $25 out, reads $0.50 (0.1x), 5-minute writes $6.25 (1.25x),
    # 1-hour writes $10 (2x) per 1M tokens.
    assert pricing.rate("claude-opus-4-7", provider="anthropic") == \
        ModelRate(5.0, 25.0, 0.5, 6.25, 10.0)
    cost = pricing.cost("claude-opus-4-7", 10_000, 1_000, 6_000, cache_write_tokens=1_000,
                        cache_write_1h_tokens=500, provider="anthropic")
    # input_tokens is the whole prompt: 2,500 uncached + 6,000 read + 1,000 + 500 written
    expected = (2_500 * 5 + 6_000 * 0.5 + 1_000 * 6.25 + 500 * 10 + 1_000 * 25) / M
    assert cost == pytest.approx(expected, rel=1e-9)
    # The old table's bug: a write billed as plain input would have cost less.
    assert cost > (4_000 * 5 + 6_000 * 0.5 + 1_000 * 25) / M


def test_a_current_openai_model_bills_cache_reads_and_honours_its_prompt_tier(pricing):
    quote = pricing.quote("gpt-6-sol", provider="openai")
    assert quote is not None and quote.source == SOURCE_DATA and quote.provider_id == "openai"
    assert quote.rate.input == 2.0 and quote.rate.output == 10.0 and quote.rate.cache_read == 0.2
    small = pricing.cost("gpt-6-sol", 100_000, 1_000, 40_000, provider="openai")
    assert small == pytest.approx((60_000 * 2 + 40_000 * 0.2 + 1_000 * 10) / M)
    # Above 272k prompt tokens every token costs the higher tier (4 / 0.4 / 15).
    large = pricing.cost("gpt-6-sol", 300_000, 1_000, 100_000, provider="openai")
    assert large == pytest.approx((200_000 * 4 + 100_000 * 0.4 + 1_000 * 15) / M)
    assert quote.tiers["input"] == [(272_000, 4.0)]


def test_an_anthropic_long_prompt_tier(pricing):
    # claude-sonnet-4-5: $3 / $15 up to 200k prompt tokens, $6 / $22.50 above.
    assert pricing.cost("claude-sonnet-4-5", 100_000, 1_000, provider="anthropic") == \
        pytest.approx((100_000 * 3 + 1_000 * 15) / M)
    assert pricing.cost("claude-sonnet-4-5", 250_000, 1_000, provider="anthropic") == \
        pytest.approx((250_000 * 6 + 1_000 * 22.5) / M)


def test_the_sample_pipelines_model_keeps_its_price(pricing):
    # gpt-4o-mini: 0.15 input, 0.075 cached input, 0.60 output per 1M tokens, as before.
    for provider in ("openai", "replay", None):
        assert pricing.cost("gpt-4o-mini", M, 0, provider=provider) == pytest.approx(0.15)
        assert pricing.cost("gpt-4o-mini", 0, M, provider=provider) == pytest.approx(0.60)
    assert pricing.cost("gpt-4o-mini", M, M, cached_tokens=400_000) == \
        pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.60)
    # More cached than input (a confused server) never bills below zero input.
    assert pricing.cost("gpt-4o-mini", 100, 0, cached_tokens=500) == pytest.approx(100 * 0.075 / M)


@pytest.mark.parametrize("model", ["gpt-4o-mini-2024-07-18", "GPT-4o-Mini"])
def test_snapshots_and_case_price_as_their_model(pricing, model):
    assert pricing.rate(model, provider="openai") == pricing.rate("gpt-4o-mini", provider="openai")


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8080/v1", "http://localhost:11434/v1",
                                      "http://10.1.2.3:8000/v1", "http://[::1]:9000/v1",
                                      "http://llama:8080/v1", "https://llm.example.com/v1"])
def test_an_openai_compatible_server_the_data_does_not_know_has_no_price(pricing, base_url):
    # A local llama.cpp model named gpt-4o-mini is not billed at OpenAI's price.
    assert not pricing.known("gpt-4o-mini", provider="openai_compatible", base_url=base_url)
    assert pricing.cost("gpt-4o-mini", 1000, 1000, provider="openai_compatible",
                        base_url=base_url) is None


def test_an_openai_compatible_host_the_data_knows_is_priced_as_that_host(pricing):
    groq = pricing.quote("llama-3.1-8b-instant", provider="openai_compatible",
                         base_url="https://api.groq.com/openai/v1")
    assert groq is not None and groq.provider_id == "groq"
    together = pricing.quote("meta-llama/Llama-3.3-70B-Instruct-Turbo",
                             provider="openai_compatible", base_url="https://api.together.xyz/v1")
    assert together is not None and together.provider_id == "together"


def test_the_vendor_providers_behind_a_proxy(pricing):
    # `openai` pointed at a proxy on loopback (LiteLLM, our test server) still pays OpenAI.
    local = "http://127.0.0.1:4000"
    assert pricing.quote("gpt-4o-mini", provider="openai", base_url=local).provider_id == "openai"
    # A gateway forwarding another vendor's model over the OpenAI wire format.
    assert pricing.quote("claude-haiku-4-5", provider="openai",
                         base_url=local).provider_id == "anthropic"
    # LiteLLM's vendor/model names.
    assert pricing.quote("anthropic/claude-haiku-4-5", provider="openai",
                         base_url=local).provider_id == "anthropic"
    assert pricing.quote("anthropic/claude-haiku-4-5", provider="replay").provider_id == "anthropic"
    # Straight to OpenAI it is an OpenAI model or nothing.
    assert pricing.quote("claude-haiku-4-5", provider="openai") is None
    # Azure's host is Azure's price list (which falls back to OpenAI's).
    azure = pricing.quote("gpt-4o-mini", provider="openai",
                          base_url="https://acme.openai.azure.com/openai/deployments/mini")
    assert azure is not None and azure.provider_id == "azure"


@pytest.mark.parametrize("model", ["llama-3.1-8b", "my-local-llama", "gpt-4o-minix"])
def test_unknown_models_have_no_price_rather_than_a_borrowed_one(pricing, model):
    assert pricing.rate(model, provider="openai") is None
    assert pricing.cost(model, 1000, 1000, provider="anthropic") is None


def test_is_local_url():
    assert is_local_url("http://127.0.0.1:1/v1") and is_local_url("http://192.168.1.5/v1")
    assert is_local_url("http://host.docker.internal:8000") and is_local_url("http://ollama:11434")
    assert not is_local_url("https://api.openai.com/v1") and not is_local_url(None)


def test_config_prices_override_the_data_and_price_unknown_models():
    config = LoomConfig.model_validate({"pricing": {
        "gpt-4o-mini": {"input": 0.10, "output": 0.40, "cached_input": 0.05},
        "my-finetune": {"input": 1.0, "output": 2.0},
        "claude-opus-4-7": {"input": 4, "output": 20, "cache_read": 0.4, "cache_write": 5,
                            "cache_write_1h": 8},
    }})
    pricing = Pricing.from_config(config)
    assert pricing.rate("gpt-4o-mini-2024-07-18", provider="openai") == ModelRate(0.10, 0.40, 0.05)
    assert pricing.quote("gpt-4o-mini", provider="openai").source == SOURCE_OVERRIDE
    assert pricing.rate("gpt-4o", provider="openai") == pricing.rate("gpt-4o", provider="openai")
    # An override prices a local model too, on any provider.
    assert pricing.cost("my-finetune", M, 0, provider="openai_compatible",
                        base_url="http://127.0.0.1:8080/v1") == pytest.approx(1.0)
    # No cache prices given: cached tokens cost as ordinary input.
    assert pricing.cost("my-finetune", M, 0, cached_tokens=M) == pytest.approx(1.0)
    assert pricing.cost("claude-opus-4-7", 10_000, 0, 6_000, cache_write_tokens=1_000,
                        cache_write_1h_tokens=1_000, provider="anthropic") == \
        pytest.approx((2_000 * 4 + 6_000 * 0.4 + 1_000 * 5 + 1_000 * 8) / M)


def test_a_pipeline_price_wins_over_the_config_and_the_data(tmp_path):
    import yaml

    from core.spec import PipelineSpec

    spec = PipelineSpec.model_validate(yaml.safe_load("""
name: p
extract: {source: "csv://in.csv"}
transform:
  prompt: p.j2
  provider: openai_compatible
  base_url: http://127.0.0.1:8080/v1
  model: local-llama
  price: {input: 0.2, output: 0.4, cache_read: 0.02}
evaluate:
  evaluators:
    - {type: custom_criteria, criteria: ok, model: gpt-4o-mini, provider: openai,
       price: {input: 9, output: 9}}
load: {destination: "csv://out.csv"}
"""))
    prices = pipeline_prices(spec)
    assert set(prices) == {"local-llama", "gpt-4o-mini"}
    config = Pricing({"local-llama": {"input": 5, "output": 5}})
    pricing = config.with_overrides(prices)
    assert pricing.rate("local-llama") == ModelRate(0.2, 0.4, 0.02)
    assert pricing.cost("gpt-4o-mini", M, 0, provider="openai") == pytest.approx(9.0)
    assert config.rate("local-llama") == ModelRate(5.0, 5.0)  # the config's pricing is unchanged


def test_a_fixed_table_replaces_the_data():
    pricing = Pricing({"m": {"input": 3, "output": 4}}, prices={})
    assert pricing.rate("m") == ModelRate(3.0, 4.0, None)
    assert pricing.rate("gpt-4o", provider="openai") is None


def test_what_caching_saved(pricing):
    quote = pricing.quote("claude-opus-4-7", provider="anthropic")
    usage = TokenUsage(input=10_000, output=100, cache_read=6_000, cache_write=1_000)
    # 6,000 reads at 5 - 0.5, less 1,000 writes at 6.25 - 5
    assert quote.saving(usage) == pytest.approx((6_000 * 4.5 - 1_000 * 1.25) / M)
    # A write that is never read back costs more than no cache: a negative saving.
    assert quote.saving(TokenUsage(input=2_000, cache_write=2_000)) == pytest.approx(-2_000 * 1.25 / M)
    assert quote.saving(TokenUsage(input=2_000, output=10)) == 0.0


def test_the_data_in_use_is_named_and_dated(pricing):
    info = pricing.data_info()
    assert info.source == "bundled" and info.package_version
    assert info.newest_price_date is not None and "genai-prices" in info.describe()


class _Data(BaseHTTPRequestHandler):
    body = json.dumps([{
        "id": "openai", "name": "OpenAI", "api_pattern": r"https://api\.openai\.com",
        "models": [{"id": "gpt-9", "match": {"equals": "gpt-9"},
                    "prices": {"input_mtok": 1, "output_mtok": 2, "cache_read_mtok": 0.1}}],
    }]).encode()

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_refreshed_data_is_fetched_on_request_and_used_from_loom_home(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Data)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        info = fetch_price_data(tmp_path / PRICES_FILE,
                                url=f"http://127.0.0.1:{server.server_port}/data.json")
    finally:
        server.shutdown()
    assert info.fetched_at and info.source.endswith(PRICES_FILE)
    pricing = Pricing.from_config(LoomConfig(), home=tmp_path)
    assert pricing.rate("gpt-9", provider="openai") == ModelRate(1.0, 2.0, 0.1)
    assert pricing.rate("gpt-4o-mini", provider="openai") is None  # only the fetched data
    assert "fetched" in pricing.data_info().describe()
    # A damaged copy is ignored: the bundled data is used.
    (tmp_path / PRICES_FILE).write_text("{not json")
    assert load_fetched_snapshot(tmp_path / PRICES_FILE) is None
    assert Pricing.from_config(LoomConfig(), home=tmp_path).known("gpt-4o-mini", provider="openai")


@pytest.mark.parametrize("provider, model", [
    ("anthropic", "claude-opus-4-7"), ("anthropic", "claude-sonnet-5-5"),
    ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-haiku-4-5"),
    ("openai", "gpt-6-sol"), ("openai", "gpt-5"), ("openai", "gpt-4o-mini"),
])
@pytest.mark.parametrize("usage", [
    TokenUsage(1_000, 200), TokenUsage(50_000, 2_000, 30_000, 5_000, 1_000),
    TokenUsage(310_000, 4_000, 100_000, 20_000, 10_000), TokenUsage(220_000, 10, 0, 0, 220_000),
])
@pytest.mark.parametrize("context", [None, {"service_tier": "flex"}, {"processing": "batch"}])
def test_our_arithmetic_is_genai_prices_own(pricing, provider, model, usage, context):
    from genai_prices import Usage, calc_price

    expected = calc_price(Usage(input_tokens=usage.input, output_tokens=usage.output,
                                cache_read_tokens=usage.cache_read,
                                cache_write_tokens=usage.cache_write + usage.cache_write_1h,
                                cache_write_1h_tokens=usage.cache_write_1h),
                          model, provider_id=provider, price_context=context)
    quote = pricing.quote(model, provider=provider)
    assert quote.cost(usage, context=context) == pytest.approx(float(expected.total_price),
                                                               rel=1e-9, abs=1e-12)
