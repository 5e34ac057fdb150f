"""`loom prices` and `loom --version`: what a model costs and which price data is in use."""

from __future__ import annotations

import json

import pytest

from core import cli


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # --version exits through argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version_names_the_price_data(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("loom ") and "prices: genai-prices" in out and "bundled data" in out


def test_prices_of_current_models_with_cache_prices_and_tiers(capsys):
    code, out, _ = run(capsys, "prices", "claude-opus-4-7", "claude-sonnet-4-5", "--provider",
                       "anthropic")
    assert code == 0
    text = " ".join(out.split())
    assert "claude-opus-4-7 (anthropic/claude-opus-4-7): input $5, output $25, cache read $0.5, " \
           "cache write 5m $6.25, cache write 1h $10 per 1M tokens" in text
    assert "above 200,000 prompt tokens: input $6" in text


def test_prices_json_an_override_and_an_unknown_model(capsys, loom_home):
    (loom_home / "config.yaml").write_text("pricing:\n  my-llama: {input: 0.1, output: 0.2}\n")
    code, out, _ = run(capsys, "prices", "my-llama", "gpt-4o-mini", "--provider",
                       "openai_compatible", "--base-url", "http://127.0.0.1:8080/v1", "--json")
    assert code == 1  # one of them has no price
    data = json.loads(out)
    assert data["data"]["source"] == "bundled"
    mine, local = data["models"]
    assert mine["source"] == "override" and mine["usd_per_mtok"]["input"] == pytest.approx(0.1)
    assert local == {"model": "gpt-4o-mini", "known": False}


def test_refresh_failure_is_one_line(capsys):
    code, _, err = run(capsys, "prices", "--refresh", "--url", "http://127.0.0.1:9/nothing.json")
    assert code == 1 and err.startswith("error: could not refresh the price data")
