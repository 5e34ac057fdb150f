"""Reviewer agreement: a person's quarantine decisions against each judge's verdict."""

from __future__ import annotations

from typing import Any

import pytest

from core.agreement import judge_decisions
from core.api import Workspace
from core.records import Score
from tests.pipelines import reply, write_pipeline
from tests.support.judging import judge_prompt, judge_responder

LABELS = ["positive", "negative", "neutral"]
LOW = {"r0001": 0.2, "r0003": 0.3}


def graded(body: dict[str, Any]) -> dict[str, Any]:
    prompt = judge_prompt(body)
    rid = next(r for r in (f"r{i:04d}" for i in range(6)) if f'"id": "{r}"' in prompt)
    value = LOW.get(rid, 0.9)
    return {"score": value, "confidence": 0.8, "explanation": f"{rid} judged {value}",
            "criteria_met": [], "criteria_not_met": []}


async def test_each_judge_agreement_rate_follows_the_reviewers_decisions(tmp_path, llm_server):
    llm_server.responder = judge_responder(graded)
    rows = [{"id": f"r{i:04d}", "text": f"review {i}", "expected": LABELS[i % 3],
             "reply": reply(LABELS[i % 3])} for i in range(6)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url, evaluate={
        "evaluators": [
            # neutral is not allowed here, so r0002 and r0005 fail the gate whatever the judge says
            {"name": "label_ok", "type": "one_of", "field": "output.sentiment",
             "values": ["positive", "negative"]},
            {"name": "judged", "type": "custom_criteria", "criteria": "Accurate", "weight": 3},
        ],
        "quality_gate": "weighted", "gate_threshold": 0.8})
    async with Workspace(tmp_path) as workspace:
        summary = await workspace.run_to_end(workspace.load(path))
        ids = {row.record_id: row.id for row in await workspace.quarantine(run_id=summary.run_id)}
        assert sorted(ids) == ["r0001", "r0002", "r0003", "r0005"]
        assert await workspace.judge_agreement() == []

        await workspace.discard([ids["r0001"]])  # the judge failed it: agree
        await workspace.approve([ids["r0003"]])  # the judge failed it: disagree (too strict)
        await workspace.approve([ids["r0002"]])  # the judge passed it: agree
        edited = await workspace.approve_edited(ids["r0005"], {"sentiment": "positive"})
        assert edited.loaded  # the judge passed what the person had to fix: too lenient
        await workspace.discard([ids["r0001"]])  # already discarded: nothing changes

        (agreement,) = await workspace.judge_agreement("test_pipeline")
        assert (agreement.pipeline, agreement.evaluator, agreement.evaluator_type) == (
            "test_pipeline", "judged", "custom_criteria")
        assert (agreement.decisions, agreement.agreed, agreement.rate) == (4, 2, 0.5)
        assert (agreement.too_strict, agreement.too_lenient) == (1, 1)
        assert agreement.to_dict()["rate"] == 0.5
        assert await workspace.judge_agreement("another_pipeline") == []

        store = await workspace.store()
        (decision,) = await store.judge_decisions(ids["r0003"])
        assert (decision.action, decision.judge_passed, decision.agreed) == ("approve", False, False)
        assert decision.judge_value == 0.3 and decision.record_id == "r0003"


def _score(evaluator: str, kind: str, passed: bool, **extra: Any) -> dict[str, Any]:
    return Score(evaluator=evaluator, type=kind, value=0.9 if passed else 0.1, passed=passed,
                 threshold=0.7, **extra).to_dict()


@pytest.mark.parametrize("action, judge_passed, agreed", [
    ("approve", True, True), ("approve", False, False),
    ("discard", False, True), ("discard", True, False),
    ("edit", False, True), ("edit", True, False),
])
def test_decisions_against_a_judge(action, judge_passed, agreed):
    (decision,) = judge_decisions([_score("j", "relevance", judge_passed)], action)
    assert decision.agreed is agreed and decision.action == action


def test_only_judges_with_a_verdict_count_and_reprocessing_says_nothing():
    scores = [_score("label_ok", "one_of", False), _score("broken", "semantic", False,
                                                          error="judge reply invalid"),
              _score("j", "pairwise", True)]
    assert [d.evaluator for d in judge_decisions(scores, "discard")] == ["j"]
    assert judge_decisions(scores, "reprocess") == []
    assert judge_decisions(None, "approve") == []
