"""Whole runs with an LLM judge through `loom --run`, against the loopback server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core import cli
from core.store import Store
from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.support.judging import judge_prompt, judge_responder

LABELS = ["positive", "negative", "neutral"]
LOW = {"r0002": 0.2, "r0005": 0.45}  # the records the judge scores low


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def from_store(read: Callable[[Store], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with await Store.open() as store:
            return await read(store)

    return asyncio.run(go())


def record_id(body: dict[str, Any]) -> str:
    found = re.search(r'"id": "(r\d+)"', judge_prompt(body))
    assert found, "the judge must see the record it judges"
    return found.group(1)


def graded(body: dict[str, Any]) -> dict[str, Any]:
    rid = record_id(body)
    low = LOW.get(rid)
    if low is not None:
        return {"score": low, "confidence": 0.9,
                "explanation": f"{rid}: the label ignores the complaint in the review.",
                "criteria_met": ["valid label"], "criteria_not_met": ["accurate sentiment"]}
    return {"score": 0.9, "confidence": 0.8, "explanation": f"{rid}: accurate.",
            "criteria_met": ["valid label", "accurate sentiment"], "criteria_not_met": []}


def acceptance_pipeline(folder, server, count: int = 8):
    rows = [{"id": f"r{i:04d}", "text": f"review number {i}", "expected": LABELS[i % 3],
             "reply": reply(LABELS[i % 3])} for i in range(count)]
    return write_pipeline(folder, rows=rows, base_url=server.base_url, evaluate={
        "evaluators": [
            {"name": "label_ok", "type": "one_of", "field": "output.sentiment",
             "values": LABELS, "weight": 1},
            {"name": "judged", "type": "custom_criteria", "weight": 3, "threshold": 0.7,
             "criteria": "Accurate sentiment, no hallucination"},
        ],
        "quality_gate": "weighted", "gate_threshold": 0.8})


def test_acceptance_the_records_the_judge_scores_low_are_quarantined(tmp_path, llm_server, capsys):
    llm_server.responder = judge_responder(graded)
    pipeline = acceptance_pipeline(tmp_path / "p", llm_server)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 8, "loaded": 6, "quarantined": 2, "skipped": 0}

    # Judge cost apart from transform cost, in the summary and in the run's row.
    by_stage = summary["cost_by_stage"]
    assert set(by_stage) == {"transform", "evaluate"}
    assert by_stage["transform"] > 0 and by_stage["evaluate"] > 0
    assert by_stage["transform"] + by_stage["evaluate"] == pytest.approx(summary["cost_usd"])
    code, out, _ = run_cli(capsys, "runs", "--json")
    (run,) = json.loads(out)
    assert run["cost_by_stage"] == by_stage

    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", summary["run_id"], "--json")
    items = json.loads(out)
    assert sorted(item["record_id"] for item in items) == sorted(LOW)
    for item in items:
        assert item["stage"] == "evaluate"
        judged = next(s for s in item["scores"] if s["evaluator"] == "judged")
        assert judged["value"] == LOW[item["record_id"]] and judged["passed"] is False
        assert judged["explanation"] == f"{item['record_id']}: the label ignores the complaint in the review."
        assert judged["confidence"] == 0.9 and judged["cost_usd"] > 0
        assert judged["details"]["criteria_not_met"] == ["accurate sentiment"]
        assert item["reason"].startswith("weighted ")
        assert "judged" in item["reason"]
        assert item["verdict"]["gate"] == "weighted" and item["verdict"]["passed"] is False

    loaded_ids = {row["id"] for row in read_jsonl(tmp_path / "p" / "out" / "results.jsonl")}
    assert loaded_ids == {f"r{i:04d}" for i in range(8)} - set(LOW)

    async def read(store: Store) -> tuple[Any, ...]:
        stats = {s.evaluator: s for s in await store.evaluation_results(summary["run_id"])}
        stored = await store.get_run(summary["run_id"])
        hashes = stored.options["judge_prompts"]["judged"]
        return stats, [await store.get_version(h) for h in hashes]

    stats, versions = from_store(read)
    judge = stats["judged"]
    assert (judge.type, judge.count, judge.passed, judge.errors) == ("custom_criteria", 8, 6, 0)
    assert judge.mean == pytest.approx((6 * 0.9 + 0.2 + 0.45) / 8)
    assert judge.min == 0.2 and judge.max == 0.9 and judge.pass_rate == 0.75
    assert judge.cost_usd == pytest.approx(by_stage["evaluate"], abs=1e-6)  # the summary rounds
    assert stats["label_ok"].cost_usd == 0
    assert [kind for kind, _ in versions] == ["judge", "judge"]
    assert "Accurate sentiment" not in versions[1][1]  # the template, not a rendered prompt
    assert "{{ criteria }}" in versions[1][1]


def test_the_human_summary_shows_judge_cost_apart(tmp_path, llm_server, capsys):
    llm_server.responder = judge_responder(graded)
    pipeline = acceptance_pipeline(tmp_path / "p", llm_server, count=3)
    code, out, err = run_cli(capsys, "--run", str(pipeline))
    assert code == 0, err
    assert re.search(r"cost\s+\$[0-9.]+ \(transform \$[0-9.]+, evaluate \$[0-9.]+\)", out)


def test_a_judge_that_never_answers_validly_quarantines_its_record(tmp_path, llm_server, capsys):
    def answer(body: dict[str, Any]) -> Any:
        return "I think it is fine." if record_id(body) == "r0001" else graded(body)

    llm_server.responder = judge_responder(answer)
    pipeline = acceptance_pipeline(tmp_path / "p", llm_server, count=4)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"]["quarantined"] == 2  # r0001 (judge failed) and r0002 (scored low)

    code, out, _ = run_cli(capsys, "quarantine", "list", "--json")
    failed = next(item for item in json.loads(out) if item["record_id"] == "r0001")
    assert failed["stage"] == "evaluate" and failed["error_type"] == "JudgeFailed"
    assert failed["reason"].startswith("judged: judge reply invalid after one repair: not JSON")
    judged = next(s for s in failed["scores"] if s["evaluator"] == "judged")
    assert judged["error"] and judged["details"]["reply"] == "I think it is fine."

    async def read(store: Store) -> dict[str, Any]:
        return {s.evaluator: s for s in await store.evaluation_results(summary["run_id"])}

    judge = from_store(read)["judged"]
    assert (judge.count, judge.errors, judge.passed) == (4, 1, 2)
    assert judge.mean == pytest.approx((0.9 + 0.2 + 0.9) / 3)  # the failure has no value
