"""The loopback LLM server itself: answers, counters, faults, and the benchmark process mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.llm_server import ANTHROPIC_PATH, OPENAI_PATH, Faults, LLMServer

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "llm_server.py"


def chat(text: str, **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def test_reply_line_decides_the_answer_and_usage_follows_length():
    with LLMServer() as server:
        body = httpx.post(f"{server.base_url}/chat/completions",
                          json=chat('Review: nice\n  reply: {"sentiment": "positive"}  \nthanks')).json()
    assert body["choices"][0]["message"]["content"] == '{"sentiment": "positive"}'
    prompt = 'Review: nice\n  reply: {"sentiment": "positive"}  \nthanks'
    assert body["usage"]["prompt_tokens"] == len(prompt) // 4 + 1
    assert body["usage"]["completion_tokens"] == len('{"sentiment": "positive"}') // 4 + 1
    assert body["model"] == "gpt-4o-mini"


def test_a_responder_answers_when_there_is_no_reply_line():
    with LLMServer(responder=lambda body: body["messages"][-1]["content"].upper()) as server:
        body = httpx.post(f"{server.base_url}/chat/completions", json=chat("shout this")).json()
    assert body["choices"][0]["message"]["content"] == "SHOUT THIS"
    with LLMServer() as server:
        body = httpx.post(f"{server.base_url}/chat/completions", json=chat("anything")).json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"ok": True}


def test_counts_per_path_and_kept_requests():
    with LLMServer(keep_requests=2) as server:
        for n in range(3):
            httpx.post(f"{server.base_url}/chat/completions", json=chat(f"n{n}"))
        httpx.post(f"{server.url}/v1/messages", json={**chat("a"), "max_tokens": 10},
                   headers={"anthropic-version": "2023-06-01"})
        assert server.count == 4
        assert (server.count[OPENAI_PATH], server.count[ANTHROPIC_PATH]) == (3, 1)
        assert [b["messages"][0]["content"] for b in server.requests] == ["n2", "a"]
        server.reset()
        assert server.count == 0 and not server.requests


def test_scripted_actions_come_first_then_rates_decide():
    with LLMServer(seed=3) as server:
        server.script(["500", "429:4", "ok"])
        url = f"{server.base_url}/chat/completions"
        first, second, third = (httpx.post(url, json=chat("x")) for _ in range(3))
        assert (first.status_code, second.status_code, third.status_code) == (500, 429, 200)
        assert second.headers["retry-after"] == "4"
        server.faults.rate_529 = 1.0
        assert httpx.post(url, json=chat("x")).status_code == 529


def test_fault_draws_follow_the_rates():
    import random

    faults = Faults(rate_429=0.25, rate_reset=0.25)
    rng = random.Random(1)
    drawn = [faults.draw(rng) for _ in range(2000)]
    assert set(drawn) == {"429", "reset", None}
    assert 0.4 < drawn.count(None) / 2000 < 0.6
    assert Faults().active is False and faults.active is True


def test_unknown_paths_and_non_json_bodies_are_refused():
    with LLMServer() as server:
        assert httpx.post(f"{server.url}/v2/other", json={}).status_code == 404
        assert httpx.post(f"{server.base_url}/chat/completions", content=b"{nope").status_code == 400


def test_the_server_runs_as_a_process_and_prints_its_port():
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--port", "0", "--latency-ms", "5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline().split()
        assert first[0] == "PORT" and int(first[1]) > 0
        response = httpx.post(f"http://127.0.0.1:{first[1]}/v1/chat/completions",
                              json=chat("reply: from a process"), timeout=10)
        assert response.json()["choices"][0]["message"]["content"] == "from a process"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert process.stderr.read() == ""  # no per-request logging


@pytest.mark.parametrize("limit, finish", [(3, "length"), (100, "stop")])
def test_max_tokens_cuts_the_answer(limit, finish):
    with LLMServer() as server:
        body = httpx.post(f"{server.base_url}/chat/completions",
                          json=chat("reply: " + "word " * 20, max_tokens=limit)).json()
    assert body["choices"][0]["finish_reason"] == finish


def test_a_follow_up_turn_without_a_reply_line_gets_the_earlier_reply():
    conversation = {"model": "m", "messages": [
        {"role": "user", "content": "reply: first"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "That was wrong, try again."}]}
    with LLMServer() as server:
        url = f"{server.base_url}/chat/completions"
        assert httpx.post(url, json=conversation).json()["choices"][0]["message"]["content"] == "first"
        conversation["messages"].append({"role": "user", "content": "reply: second"})
        assert httpx.post(url, json=conversation).json()["choices"][0]["message"]["content"] == "second"
