"""The budget against an endpoint that counts far more tokens than Loom estimates.

A provider's tokenizer is not chars/4: Japanese, emoji or code can cost several times more. The
loopback server here reports 4x the tokens of a chars/4 estimate for every prompt. The run must
still stop at its budget — what it spent may pass the budget only by the calls that were in
flight when the budget was reached:

    spent <= budget + concurrency x (the most one call cost)

and `--resume` with a larger budget must finish the rest, each record paid for exactly once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from core import cli
from tests.adversary.hostile import Hostile, prompt_text
from tests.pipelines import LOOPBACK_PRICE, reply, write_pipeline

CONCURRENCY = 8
INFLATION = 4  # the server's tokens per chars/4 token
OUTPUT_TOKENS = 5
MAX_TOKENS = 20
LABELS = ["positive", "negative", "neutral"]


def chars_over_4(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content"))) for m in body.get("messages", [])) // 4 + 1


class Inflating:
    """Answers each record with the label its prompt asks for, reporting INFLATION x the
    chars/4 tokens, after a short delay so that calls overlap at the run's concurrency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_record: Counter[str] = Counter()

    def __call__(self, n: int, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        time.sleep(0.02)
        text = prompt_text(body)
        record = text.split("record ", 1)[1].split(" ", 1)[0] if "record " in text else "?"
        with self.lock:
            self.by_record[record] += 1
        answer = text.rsplit("reply: ", 1)[1].strip()
        prompt_tokens = INFLATION * chars_over_4(body)
        return 200, {}, {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": OUTPUT_TOKENS,
                      "total_tokens": prompt_tokens + OUTPUT_TOKENS}}


def source(count: int) -> list[dict[str, str]]:
    filler = "lorem ipsum dolor sit amet " * 60  # ~1,600 characters: input dominates the cost
    return [{"id": f"r{i:04d}", "text": f"record r{i:04d} {filler}",
             "expected": LABELS[i % 3], "reply": reply(LABELS[i % 3])} for i in range(count)]


def per_call_cost(rows: list[dict[str, str]]) -> float:
    """What the server makes the costliest call of these records cost."""
    longest = max(len(row["text"]) + len(row["reply"]) for row in rows) + 200  # + the prompt
    tokens = INFLATION * (longest // 4 + 1) + 64
    return (tokens * LOOPBACK_PRICE["input"] + OUTPUT_TOKENS * LOOPBACK_PRICE["output"]) / 1e6


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_a_budget_holds_against_4x_the_estimated_tokens_then_resumes_once(
        tmp_path, loom_home, capsys):
    rows = source(200)
    budget = 0.01
    answers = Inflating()
    with Hostile(answers) as server:
        transform = {"concurrency": CONCURRENCY, "cache": False, "max_tokens": MAX_TOKENS}
        path = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                              transform=transform, budget={"max_cost_usd": budget})
        code, stopped, err = run_cli(capsys, "--run", str(path), "--json")
        spent = stopped["cost_usd"]
        bound = budget + CONCURRENCY * per_call_cost(rows)
        with capsys.disabled():
            print(f"\nbudget ${budget}: spent ${spent:.6f} ({spent / budget:.2f}x), "
                  f"bound ${bound:.6f}, {server.requests} calls")
        # A budget stop: partial, exit 3, the records not reached skipped and resumable.
        assert code == 3, err
        assert stopped["status"] == "partial"
        assert "budget $0.01 reached" in stopped["status_reason"]
        assert stopped["records"]["skipped"] > 0
        assert spent <= bound
        # Every record costs the same here: once the first answer taught the budget the real
        # token count, each reservation covers its call, and the budget is not passed at all.
        assert spent <= budget
        assert stopped["llm"]["calls"] == server.requests

        raised = write_pipeline(tmp_path / "p", base_url=server.base_url, transform=transform,
                                budget={"max_cost_usd": 1.0})
        code, summary, err = run_cli(capsys, "--run", str(raised), "--resume",
                                     stopped["run_id"], "--json")
        assert code == 0, err
        assert summary["status"] == "success"
        assert summary["records"] == {"extracted": 200, "loaded": 200, "quarantined": 0,
                                      "skipped": 0}
        # Exactly once: every record asked once across both attempts, and counted once.
        assert server.requests == 200
        assert set(answers.by_record.values()) == {1} and len(answers.by_record) == 200
        assert summary["llm"]["calls"] == 200
    written = [json.loads(line)["id"] for line in
               (tmp_path / "p" / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(written) == [row["id"] for row in rows]


def test_a_budget_smaller_than_the_calls_in_flight_is_not_spent_several_times_over(
        tmp_path, loom_home, capsys):
    """What was measured at 3.9x: a budget that 8 calls fit on estimates, but 2 at their real
    cost. All 8 were admitted at once; now the first call goes alone, and the next are
    reserved at what it really cost."""
    rows = source(40)
    real = per_call_cost(rows)
    budget = round(2.2 * real, 6)
    with Hostile(Inflating()) as server:
        path = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                              transform={"concurrency": CONCURRENCY, "cache": False,
                                         "max_tokens": MAX_TOKENS},
                              budget={"max_cost_usd": budget})
        code, stopped, err = run_cli(capsys, "--run", str(path), "--json")
        with capsys.disabled():
            print(f"\nbudget ${budget}: spent ${stopped['cost_usd']:.6f} "
                  f"({stopped['cost_usd'] / budget:.2f}x), {server.requests} calls")
        assert code == 3 and stopped["status"] == "partial"
        assert stopped["cost_usd"] <= budget
        assert 1 <= server.requests <= 2
