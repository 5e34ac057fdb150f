"""Approve, edit then approve, reprocess and discard: the store and the destination change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import cli
from core.api import Workspace
from core.errors import UsageError
from tests.pipelines import read_jsonl, reply, write_pipeline


def rows(count: int) -> list[dict[str, str]]:
    # Every third record's answer disagrees with the truth: quarantined at evaluate.
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 3 == 0 else "positive")} for i in range(count)]


@pytest.fixture
async def quarantined(tmp_path: Path, llm_server):
    path = write_pipeline(tmp_path / "p", rows=rows(9), base_url=llm_server.base_url,
                          load={"destination": "jsonl://out/results.jsonl", "mode": "replace"})
    async with Workspace(tmp_path) as workspace:
        summary = await workspace.run_to_end(workspace.load(path))
        assert summary.quarantined == 3
        items = await workspace.quarantine(run_id=summary.run_id)
        yield workspace, path, {item.record_id: item.id for item in items}


def destination(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl(path.parent / "out" / "results.jsonl")}


async def test_approve_loads_the_output_as_it_is_and_records_the_action(quarantined) -> None:
    workspace, path, ids = quarantined
    before = destination(path)
    [result] = await workspace.approve([ids["r3"]], note="the truth label is wrong")
    assert result.loaded and result.status == "approved"
    after = destination(path)
    assert set(after) == set(before) | {"r3"}  # appended, not replaced
    assert after["r3"]["sentiment"] == "negative"
    row = await workspace.quarantined(ids["r3"])
    assert row.status == "approved" and row.resolved_at is not None
    assert row.resolution_note == "the truth label is wrong"
    [action] = await workspace.quarantine_history(ids["r3"])
    assert action.action == "approve" and action.at is not None
    assert (await workspace.approve([ids["r3"]]))[0].message == "already approved; nothing done"


async def test_edit_then_approve_checks_the_schema_first(quarantined) -> None:
    workspace, path, ids = quarantined
    bad = await workspace.approve_edited(ids["r0"], {"sentiment": "ecstatic"})
    assert not bad.loaded and "output_schema" in bad.message
    assert "r0" not in destination(path)
    good = await workspace.approve_edited(ids["r0"], {"sentiment": "positive"})
    assert good.loaded
    assert destination(path)["r0"]["sentiment"] == "positive"
    assert (await workspace.quarantined(ids["r0"])).final_output == {"sentiment": "positive"}


async def test_reprocess_uses_the_current_prompt_and_loads_what_now_passes(quarantined, llm_server) -> None:
    workspace, path, ids = quarantined
    still = await workspace.reprocess([ids["r6"]])
    assert still[0].status == "open" and "still quarantined" in still[0].message
    # Fix the prompt: now the model is told the expected label.
    (path.parent / "prompt.j2").write_text('{{ input.text }}\nreply: {"sentiment": "{{ input.expected }}"}\n')
    calls = llm_server.count
    [fixed] = await workspace.reprocess([ids["r6"]])
    assert fixed.loaded and fixed.status == "reprocessed"
    assert llm_server.count == calls + 1
    assert destination(path)["r6"]["sentiment"] == "positive"
    row = await workspace.quarantined(ids["r6"])
    assert all(score["passed"] for score in row.scores)
    actions = [a.action for a in await workspace.quarantine_history(ids["r6"])]
    assert actions == ["reprocess", "reprocess"]


async def test_discard_never_loads(quarantined) -> None:
    workspace, path, ids = quarantined
    results = await workspace.discard([ids["r0"], ids["r3"]], note="spam")
    assert [r.status for r in results] == ["discarded", "discarded"]
    assert not {"r0", "r3"} & set(destination(path))
    assert await workspace.count_quarantine(status="open") == 1
    with pytest.raises(UsageError, match="no quarantined record 999"):
        await workspace.discard([999])


def test_the_cli_offers_the_same_actions(tmp_path: Path, llm_server, capsys) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(6), base_url=llm_server.base_url)
    assert cli.main(["--run", str(path), "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["quarantine", "list", "--json"]) == 0
    ids = [item["id"] for item in json.loads(capsys.readouterr().out)]
    assert len(ids) == 2

    assert cli.main(["quarantine", "show", str(ids[0]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["stage"] == "evaluate" and shown["actions"] == []

    assert cli.main(["quarantine", "approve", str(ids[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "approved"
    assert cli.main(["quarantine", "approve", str(ids[1]), "--output", '{"sentiment": "neutral"}']) == 0
    capsys.readouterr()
    assert destination(path)["r3"]["sentiment"] == "neutral"
    assert cli.main(["quarantine", "discard", "12345"]) == 2
    assert "no quarantined record 12345" in capsys.readouterr().err
    assert cli.main(["quarantine", "approve", str(ids[0]), str(ids[1]), "--output", "{}"]) == 2
