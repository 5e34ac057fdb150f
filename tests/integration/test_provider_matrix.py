"""Acceptance: Loom's pipelines run clean through real third-party servers, on current models.

Through the LiteLLM proxy (provider openai_compatible, the proxy's master key), on every model
it lists: a pipeline with an output schema, one without (plain text), and one with an LLM
judge; every record loads, exit 0, and the cost is what LiteLLM's own price data says.
Through the llama-cpp-python server: a structured-output pipeline and a judge.

These are the specification of the provider layer, not a description of it: LiteLLM refuses
what the vendors refuse (temperature on claude-opus-4-7, temperature 0 on reasoning models...)
and llama.cpp's server has its own structured-output dialect, so a Loom that sends the same
body everywhere fails here though it passes against our own loopback server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core import cli
from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.support.judging import is_judge_request, judge_responder
from tests.support.litellm_proxy import ANTHROPIC_MODELS, DEFAULT_MODELS
from tests.support.llm_server import ANTHROPIC_PATH, OPENAI_PATH

# The first test to use a server pays for its start (a minute or more for LiteLLM on a busy
# machine); each run then goes through a real HTTP proxy.
# Once on each HTTP transport (tests/conftest.py `http_transport`).
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("http_transport")]

LABELS = ["positive", "negative", "neutral"]
COUNT = 6

# $ per token in LiteLLM 1.108.14's bundled model data (model_prices_and_context_window_backup
# .json), which is what its x-litellm-response-cost header is computed from.
LITELLM_PRICES = {
    "gpt-4o-mini": (0.15e-6, 0.6e-6),
    "gpt-5-mini": (0.25e-6, 2e-6),
    "gpt-6-sol": (2e-6, 10e-6),
    "claude-haiku-4-5": (1e-6, 5e-6),
    "claude-opus-4-7": (5e-6, 25e-6),
    "claude-sonnet-5-5": (2e-6, 10e-6),
}

JUDGE = {"name": "judged", "type": "custom_criteria", "threshold": 0.7, "weight": 2,
         "criteria": "The label matches the review's sentiment."}


def run(capsys: pytest.CaptureFixture[str], pipeline: Path) -> tuple[int, dict[str, Any], str]:
    code = cli.main(["--run", str(pipeline), "--json"])
    out, err = capsys.readouterr()
    try:
        summary = json.loads(out)
    except ValueError:
        summary = {}
    return code, summary, err


def assert_clean(code: int, summary: dict[str, Any], err: str, capsys: pytest.CaptureFixture[str],
                 count: int = COUNT) -> None:
    """Exit 0 and every record loaded; else the failure says why (the run's reason and the
    distinct quarantine reasons, which carry the provider's error)."""
    clean = {"extracted": count, "loaded": count, "quarantined": 0, "skipped": 0}
    if code == 0 and summary.get("records") == clean and summary.get("status") == "success":
        return
    cli.main(["quarantine", "list", "--json"] + (["--run", summary["run_id"]] if summary else []))
    out, _ = capsys.readouterr()
    try:
        reasons = sorted({item["reason"] for item in json.loads(out)})
    except ValueError:
        reasons = [out[-2000:]]
    pytest.fail(f"exit {code}, {summary.get('status')} ({summary.get('status_reason')}), "
                f"records {summary.get('records')}; quarantined because: {reasons}; "
                f"stderr: {err[-1500:]}", pytrace=False)


def rows(*, text_reply: bool = False) -> list[dict[str, str]]:
    return [{"id": f"r{i:04d}", "text": f"review number {i}", "expected": LABELS[i % 3],
             "reply": LABELS[i % 3] if text_reply else reply(LABELS[i % 3])}
            for i in range(COUNT)]


# The word JSON is in the prompt: OpenAI's JSON modes refuse a prompt without it.
JSON_PROMPT = "Classify this review; answer in JSON.\n{{ input.text }}\nreply: {{ input.reply }}\n"
TEXT_PROMPT = "Classify this review in one word.\n{{ input.text }}\nreply: {{ input.reply }}\n"


def proxied(folder: Path, proxy: Any, model: str, **sections: Any) -> Path:
    transform = {"model": model, "api_key": proxy.api_key, "timeout_s": 60,
                 **sections.pop("transform", {})}
    return write_pipeline(folder, base_url=proxy.base_url, transform=transform, **sections)


def upstream_path(model: str) -> str:
    return ANTHROPIC_PATH if model in ANTHROPIC_MODELS else OPENAI_PATH


# ---------------------------------------------------------------- through the LiteLLM proxy


@pytest.mark.parametrize("model", DEFAULT_MODELS)
def test_a_pipeline_with_an_output_schema_loads_every_record(tmp_path, capsys, litellm_proxy,
                                                            proxy_upstream, model):
    pipeline = proxied(tmp_path / "p", litellm_proxy, model, rows=rows(), prompt=JSON_PROMPT)
    code, summary, err = run(capsys, pipeline)
    assert_clean(code, summary, err, capsys)
    loaded = read_jsonl(tmp_path / "p" / "out" / "results.jsonl")
    assert sorted(row["id"] for row in loaded) == [f"r{i:04d}" for i in range(COUNT)]
    # One call per record, no repairs, and each reached the upstream in its vendor's format.
    assert proxy_upstream.count == COUNT and proxy_upstream.count[upstream_path(model)] == COUNT
    for body in proxy_upstream.requests:
        if model in ANTHROPIC_MODELS:
            # Constrained decoding, natively: LiteLLM turns a json_schema response_format into
            # Anthropic's structured output; a forced tool is what these models refuse.
            assert "output_format" in body or "format" in body.get("output_config", {}), body
            assert body.get("tool_choice", {}).get("type") not in ("tool", "any"), body
        else:
            # OpenAI's constrained decoding happens only with strict: true.
            assert body["response_format"]["type"] == "json_schema", body
            assert body["response_format"]["json_schema"]["strict"] is True, body


@pytest.mark.parametrize("model", DEFAULT_MODELS)
def test_a_text_pipeline_without_an_output_schema_loads_every_record(tmp_path, capsys,
                                                                    litellm_proxy, proxy_upstream, model):
    pipeline = proxied(
        tmp_path / "p", litellm_proxy, model, rows=rows(text_reply=True), prompt=TEXT_PROMPT,
        transform={"output_schema": None},
        evaluate={"evaluators": [{"name": "label_ok", "type": "one_of", "field": "output.text",
                                  "values": LABELS}]})
    code, summary, err = run(capsys, pipeline)
    assert_clean(code, summary, err, capsys)
    assert proxy_upstream.count == COUNT and proxy_upstream.count[upstream_path(model)] == COUNT
    assert all("response_format" not in body and "output_format" not in body
               for body in proxy_upstream.requests)


def judged(body: dict[str, Any]) -> dict[str, Any]:
    return {"score": 0.9, "confidence": 0.8, "explanation": "The label fits the review.",
            "criteria_met": ["label matches"], "criteria_not_met": []}


@pytest.mark.parametrize("model", DEFAULT_MODELS)
def test_a_pipeline_with_an_llm_judge_loads_every_record(tmp_path, capsys, litellm_proxy,
                                                        proxy_upstream, model):
    proxy_upstream.responder = judge_responder(judged)
    pipeline = proxied(tmp_path / "p", litellm_proxy, model, rows=rows(), prompt=JSON_PROMPT,
                       evaluate={"evaluators": [
                           {"name": "label_ok", "type": "one_of", "field": "output.sentiment",
                            "values": LABELS}, JUDGE]})
    code, summary, err = run(capsys, pipeline)
    assert_clean(code, summary, err, capsys)
    judge_calls = [body for body in proxy_upstream.requests if is_judge_request(body)]
    assert len(judge_calls) == COUNT and proxy_upstream.count == 2 * COUNT
    assert summary["cost_by_stage"]["evaluate"] > 0


@pytest.mark.parametrize("model", DEFAULT_MODELS)
def test_the_cost_is_litellms_to_within_one_percent(tmp_path, capsys, litellm_proxy, proxy_upstream,
                                                    model):
    pipeline = proxied(tmp_path / "p", litellm_proxy, model, rows=rows(), prompt=JSON_PROMPT)
    code, summary, err = run(capsys, pipeline)
    assert_clean(code, summary, err, capsys)
    per_input, per_output = LITELLM_PRICES[model]
    expected = summary["tokens"]["input"] * per_input + summary["tokens"]["output"] * per_output
    assert summary["cost_usd"] is not None, f"{model} was not costed"
    assert summary["cost_usd"] == pytest.approx(expected, rel=0.01)


# ---------------------------------------------------------------- through llama-cpp-python

SENTIMENT_SCHEMA = {"type": "object", "required": ["sentiment"],
                    "properties": {"sentiment": {"enum": LABELS}}}


def local(folder: Path, server: Any, **sections: Any) -> Path:
    transform = {"model": server.model, "api_key": None, "timeout_s": 120, "concurrency": 2,
                 "max_tokens": 200, "output_schema": SENTIMENT_SCHEMA,
                 **sections.pop("transform", {})}
    # A random-weight model answers nonsense to any prompt: only the structure is checked.
    evaluate = sections.pop("evaluate", {"evaluators": [
        {"name": "label_ok", "type": "one_of", "field": "output.sentiment", "values": LABELS}]})
    return write_pipeline(folder, base_url=server.base_url, rows=rows()[:3], prompt=JSON_PROMPT,
                          transform=transform, evaluate=evaluate, **sections)


def test_llama_cpp_a_structured_output_pipeline_loads_every_record(tmp_path, capsys,
                                                                   llama_server):
    code, summary, err = run(capsys, local(tmp_path / "p", llama_server))
    assert_clean(code, summary, err, capsys, count=3)
    for row in read_jsonl(tmp_path / "p" / "out" / "results.jsonl"):
        assert row["sentiment"] in LABELS  # the output's fields are the row's columns


def test_llama_cpp_with_the_structured_output_mode_named(tmp_path, capsys, llama_server):
    # llama-cpp-python takes {"type": "json_object", "schema": ...}; a pipeline can say so.
    pipeline = local(tmp_path / "p", llama_server,
                     transform={"structured_output": "json_object_schema"})
    code, summary, err = run(capsys, pipeline)
    assert_clean(code, summary, err, capsys, count=3)


def test_llama_cpp_a_pipeline_with_an_llm_judge_loads_every_record(tmp_path, capsys,
                                                                  llama_server):
    pipeline = local(tmp_path / "p", llama_server, evaluate={"evaluators": [
        {"name": "label_ok", "type": "one_of", "field": "output.sentiment", "values": LABELS},
        {**JUDGE, "threshold": 0.0}]})  # the judge's score is noise; its answer's shape is not
    code, summary, err = run(capsys, pipeline)
    assert_clean(code, summary, err, capsys, count=3)
    # The judge asked the model too (a local server has no price: its cost is unknown, not $0).
    assert "evaluate" in summary["cost_by_stage"] and summary["llm"]["calls"] >= 6


# ---------------------------------------------------------------- the gateway's own cost


@pytest.mark.parametrize("model", DEFAULT_MODELS)
async def test_each_call_is_costed_within_one_percent_of_the_gateways_header(litellm_proxy,
                                                                            proxy_upstream, model):
    from core.llm.base import LLMRequest
    from core.llm.client import LLMClient
    from core.llm.openai import OpenAIProvider
    from core.llm.pricing import Pricing

    provider = OpenAIProvider(name="openai_compatible", base_url=litellm_proxy.base_url,
                              api_key=litellm_proxy.api_key, timeout_s=60)
    client = LLMClient(provider, pricing=Pricing())
    try:
        for i in range(3):
            prompt = f"Classify review {i} in JSON.\nreply: {json.dumps({'sentiment': LABELS[i]})}"
            _, call = await client.complete(LLMRequest(model=model, messages=[
                {"role": "user", "content": prompt}], max_tokens=100))
            assert call.reported_cost_usd is not None, "LiteLLM sent no x-litellm-response-cost"
            assert call.cost_source == "genai-prices"  # our own price, not the gateway's figure
            assert call.cost_usd == pytest.approx(call.reported_cost_usd, rel=0.01), \
                (model, call.cost_usd, call.reported_cost_usd)
    finally:
        await client.aclose()


# ---------------------------------------------------------------- provider prompt caching


def test_a_long_context_is_read_from_the_anthropic_prompt_cache_through_the_proxy(
        tmp_path, capsys, litellm_proxy, proxy_upstream, loom_home):
    import sqlite3

    # About 2,000 tokens of context, the same for every record: the prompt's static prefix.
    context = tmp_path / "p" / "taxonomy.md"
    context.parent.mkdir(parents=True)
    context.write_text("".join(f"Rule {n}: a review that says '{n}' is neutral unless it says more.\n"
                               for n in range(130)), encoding="utf-8")
    prompt = ("Classify reviews with these rules, in JSON.\n{{ context.taxonomy }}\n"
              "Review: {{ input.text }}\nreply: {{ input.reply }}\n")
    pipeline = proxied(tmp_path / "p", litellm_proxy, "claude-sonnet-5-5", rows=rows(), prompt=prompt,
                       transform={"context": ["taxonomy.md"], "concurrency": 1})
    proxy_upstream.prompt_cache = True  # the upstream keeps a prompt cache, as Anthropic does
    try:
        code, summary, err = run(capsys, pipeline)
    finally:
        proxy_upstream.prompt_cache = False
    assert_clean(code, summary, err, capsys)
    # The static prefix reached Anthropic marked for its cache.
    first = proxy_upstream.requests[0]
    marked = [block for block in first["messages"][0]["content"] if "cache_control" in block]
    assert marked and "Rule 129" in marked[0]["text"]
    with sqlite3.connect(loom_home / "loom.db") as db:
        reads = [row[0] for row in db.execute(
            "SELECT cache_read_tokens FROM record_results WHERE run_id = ? ORDER BY ordinal",
            (summary["run_id"],))]
    assert reads[0] == 0 and all(read > 1500 for read in reads[1:]), reads  # every record after the first
    assert summary["tokens"]["cache_read"] == sum(reads)
    assert summary["savings_usd"]["prompt_cache"] > 0  # what caching saved, in dollars
