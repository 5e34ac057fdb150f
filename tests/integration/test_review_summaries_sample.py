"""The review_summaries sample runs offline: its cassette answers the transform and the judge.

If this fails after a change to the sample, its prompt or the packaged judge prompts, rewrite
the cassette: .venv/bin/python tools/write_demo_cassette.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core import cli
from core.api import Workspace

SAMPLE = Path(__file__).resolve().parents[2] / "sample_pipelines" / "review_summaries"


def copy_sample(tmp_path: Path) -> Path:
    target = tmp_path / "review_summaries"
    shutil.copytree(SAMPLE, target, ignore=shutil.ignore_patterns("out"))
    return target


def test_the_sample_quarantines_the_summaries_its_judge_scores_low(tmp_path, capsys):
    folder = copy_sample(tmp_path)
    code = cli.main(["--run", str(folder), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 10, "loaded": 8, "quarantined": 2, "skipped": 0}
    assert set(summary["cost_by_stage"]) == {"transform", "evaluate"}
    assert summary["alerts"] == []

    assert cli.main(["quarantine", "list", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert sorted(item["record_id"] for item in items) == ["R003", "R007"]
    for item in items:
        judge = next(s for s in item["scores"] if s["evaluator"] == "faithful")
        assert judge["value"] < 0.7 and "review" in judge["explanation"]
    loaded = [json.loads(line) for line in
              (folder / "out" / "summaries.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["review_id"] for row in loaded] == [
        "R001", "R002", "R004", "R005", "R006", "R008", "R009", "R010"]


async def test_the_workbench_sample_run_shows_the_judge_explanation(tmp_path):
    folder = copy_sample(tmp_path)
    async with Workspace(folder) as workspace:
        loaded = workspace.load(folder)
        records = await workspace.preview(loaded, limit=3)
        results = await workspace.run_sample(loaded, records)
    judged = {r.record.id: next(s for s in r.scores if s.evaluator == "faithful") for r in results}
    assert judged["R003"].value == 0.2 and not judged["R003"].passed
    assert judged["R003"].explanation.startswith("The review only says the toaster toasts bread")
    assert judged["R001"].passed and judged["R001"].confidence == 0.9
