"""What LLMClient books for a call: our price (override or genai-prices data) by the provider
and base URL the call went to, a gateway's reported cost when we have none, cache tokens and
what prompt caching saved, and budgets held with the same prices."""

from __future__ import annotations

import pytest

from core.errors import BudgetExceeded
from core.llm.anthropic import AnthropicProvider
from core.llm.base import LLMRequest, LLMResponse, Provider
from core.llm.budget import Budget
from core.llm.client import LLMClient
from core.llm.openai import OpenAIProvider
from core.llm.pricing import SOURCE_DATA, SOURCE_GATEWAY, SOURCE_OVERRIDE, Pricing
from core.records import TokenTotals

M = 1_000_000


class Canned(Provider):
    """Answers every request with the same response."""

    def __init__(self, response: LLMResponse, *, name: str = "openai_compatible",
                 base_url: str | None = "http://127.0.0.1:4000/v1") -> None:
        self.response = response
        self.name = name
        self.base_url = base_url

    async def complete(self, request: LLMRequest) -> LLMResponse:
        return self.response


def ask(model: str = "gpt-4o-mini", **fields) -> LLMRequest:
    return LLMRequest(messages=[{"role": "user", "content": "Classify: great"}], model=model,
                      **fields)


async def test_without_a_price_the_gateways_reported_cost_is_booked_and_said_so():
    warnings: list[str] = []
    response = LLMResponse(text="{}", input_tokens=1000, output_tokens=100,
                           reported_cost_usd=0.00042)
    async with LLMClient(Canned(response), pricing=Pricing(), on_warning=warnings.append) as client:
        for _ in range(2):
            _, call = await client.complete(ask("team-llama"))
            assert call.cost_usd == pytest.approx(0.00042)
            assert call.cost_source == SOURCE_GATEWAY and call.reported_cost_usd == 0.00042
            assert call.prompt_cache_saved_usd is None
    assert len(warnings) == 1 and "gateway reported" in warnings[0]


async def test_with_a_price_ours_is_booked_and_the_gateways_kept_beside_it():
    ours = (1000 * 0.15 + 100 * 0.60) / M  # gpt-4o-mini
    response = LLMResponse(text="{}", input_tokens=1000, output_tokens=100,
                           reported_cost_usd=ours * 1.004)
    # LiteLLM in front of OpenAI, reached through the openai provider.
    async with LLMClient(Canned(response, name="openai"), pricing=Pricing()) as client:
        _, call = await client.complete(ask("gpt-4o-mini"))
    assert call.cost_source == SOURCE_DATA and call.cost_usd == pytest.approx(ours)
    assert call.reported_cost_usd == pytest.approx(call.cost_usd, rel=0.01)


async def test_an_override_is_booked_as_such():
    response = LLMResponse(text="{}", input_tokens=M, output_tokens=0, reported_cost_usd=9.0)
    pricing = Pricing({"team-llama": {"input": 0.5, "output": 1.0}})
    async with LLMClient(Canned(response), pricing=pricing) as client:
        _, call = await client.complete(ask("team-llama"))
    assert call.cost_source == SOURCE_OVERRIDE and call.cost_usd == pytest.approx(0.5)


async def test_a_local_server_named_like_an_openai_model_is_not_billed(llm_server):
    warnings: list[str] = []
    provider = OpenAIProvider(name="openai_compatible", api_key="x", base_url=llm_server.base_url)
    async with LLMClient(provider, pricing=Pricing(), on_warning=warnings.append) as client:
        _, call = await client.complete(ask("gpt-4o-mini"))
    assert call.cost_usd is None and call.cost_source is None
    assert "openai_compatible" in warnings[0]


async def test_the_model_the_response_reports_prices_a_deployment_alias():
    response = LLMResponse(text="{}", input_tokens=1000, output_tokens=100,
                           model="gpt-4o-mini-2024-07-18")
    async with LLMClient(Canned(response, name="openai"), pricing=Pricing()) as client:
        _, call = await client.complete(ask("prod-classifier"))
    assert call.cost_usd == pytest.approx((1000 * 0.15 + 100 * 0.60) / M)


async def test_the_service_tier_the_response_reports_selects_its_price():
    response = LLMResponse(text="{}", input_tokens=M, output_tokens=0,
                           raw={"service_tier": "flex"})
    async with LLMClient(Canned(response, name="openai", base_url=None),
                         pricing=Pricing()) as client:
        _, call = await client.complete(ask("gpt-5"))
    assert call.cost_usd == pytest.approx(0.625)  # flex: half of gpt-5's $1.25


async def test_anthropic_cache_tokens_are_counted_priced_and_their_saving_booked(llm_server):
    llm_server.cached_tokens = 40
    provider = AnthropicProvider(api_key="sk-ant-test-0123456789",
                                 base_url=llm_server.anthropic_base_url)
    text = "Classify.\n" + "context " * 60 + '\nreply: {"sentiment": "negative"}'
    async with LLMClient(provider, pricing=Pricing()) as client:
        response, call = await client.complete(LLMRequest(
            messages=[{"role": "user", "content": text}], model="claude-haiku-4-5"))
    assert call.cached_tokens == 40 and response.input_tokens > 40
    # claude-haiku-4-5: $1 in, $0.10 cache read, $5 out
    uncached = response.input_tokens - 40
    assert call.cost_usd == pytest.approx((uncached * 1 + 40 * 0.1 + call.output_tokens * 5) / M)
    assert call.prompt_cache_saved_usd == pytest.approx(40 * 0.9 / M)
    totals = TokenTotals.of([call, call])
    assert totals.cache_read == 80 and totals.prompt_cache_saved_usd == pytest.approx(80 * 0.9 / M)


async def test_cache_writes_and_reasoning_reach_the_call():
    response = LLMResponse(text="{}", input_tokens=10_000, output_tokens=500, cached_tokens=0,
                           cache_write_tokens=6_000, cache_write_1h_tokens=2_000,
                           reasoning_tokens=300)
    async with LLMClient(Canned(response, name="anthropic", base_url=None),
                         pricing=Pricing()) as client:
        _, call = await client.complete(ask("claude-opus-4-7"))
    assert (call.cache_write_tokens, call.cache_write_1h_tokens, call.reasoning_tokens) == \
        (6_000, 2_000, 300)
    assert call.cost_usd == pytest.approx((2_000 * 5 + 6_000 * 6.25 + 2_000 * 10 + 500 * 25) / M)
    # Writes only: the premium is a negative saving until a later call reads them.
    assert call.prompt_cache_saved_usd == pytest.approx(-(6_000 * 1.25 + 2_000 * 5) / M)
    assert call.to_dict()["cost_source"] == SOURCE_DATA


async def test_budgets_reserve_with_the_price_of_where_the_call_goes():
    warnings: list[str] = []
    budget = Budget(1e-6, pricing=Pricing(), on_warning=warnings.append)
    response = LLMResponse(text="{}", input_tokens=10, output_tokens=10)
    # A current model is priced, so the budget holds: the call is refused before it is sent.
    async with LLMClient(Canned(response, name="anthropic", base_url=None), pricing=Pricing(),
                         budget=budget) as client:
        with pytest.raises(BudgetExceeded):
            await client.complete(ask("claude-sonnet-5-5", max_tokens=1000))
    # The same name on a local server has no price: said once, and the call goes ahead.
    budget = Budget(1e-6, pricing=Pricing(), on_warning=warnings.append)
    async with LLMClient(Canned(response), pricing=Pricing(), budget=budget) as client:
        await client.complete(ask("claude-sonnet-5-5", max_tokens=1000))
    assert any("cannot be enforced" in w for w in warnings)
