"""A pipeline's identity is its file, not only its `name:`: a copied folder keeps its own
history, last run, quarantine and resume, and running it says that the name is shared."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path


from core import cli
from core.api import Workspace, pipeline_key
from core.engine import RunController, RunOptions
from core.events import Progress, RunFinished
from tests.pipelines import reply, write_pipeline


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i == 0 else "positive")} for i in range(count)]


def two_copies(tmp_path: Path, server) -> tuple[Path, Path]:
    original = write_pipeline(tmp_path / "a", rows=rows(40), base_url=server.base_url,
                              transform={"concurrency": 1, "cache": False})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    return original, tmp_path / "b" / "pipeline.yaml"


async def cancelled_run(path: Path) -> str:
    controller = RunController()
    async with Workspace(path.parent) as workspace:
        async for event in workspace.run(workspace.load(path), RunOptions(),
                                         controller=controller):
            if isinstance(event, Progress) and event.transformed >= 3:
                controller.cancel()
            if isinstance(event, RunFinished):
                summary = event.summary
    assert summary.status == "cancelled" and summary.skipped > 0
    return summary.run_id


def test_a_copy_does_not_resume_the_originals_run(tmp_path, llm_server, capsys):
    llm_server.latency_s = 0.02
    original, copy = two_copies(tmp_path, llm_server)
    cancelled = asyncio.run(cancelled_run(original))
    code, out, err = run_cli(capsys, "--run", str(copy), "--resume")
    assert code == 2 and err.count("\n") == 1
    assert "has no unfinished run" in err
    code, out, err = run_cli(capsys, "--run", str(copy), "--resume", cancelled)
    assert code == 2 and f"that run is of the pipeline file {original}" in err
    code, out, err = run_cli(capsys, "--run", str(original), "--resume", "--json")
    assert code == 0, err
    assert json.loads(out)["run_id"] == cancelled


def test_two_files_with_one_name_are_told_apart(tmp_path, llm_server, capsys, monkeypatch):
    original, copy = two_copies(tmp_path, llm_server)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "--run", str(original), "--json")
    assert code == 0, err
    assert "also the name of" not in err
    first = json.loads(out)["run_id"]
    code, out, err = run_cli(capsys, "--run", str(copy), "--json")
    assert code == 0
    warnings = [line for line in err.splitlines() if "also the name of" in line]
    assert warnings == [f"warning: pipeline name 'test_pipeline' is also the name of {original}: "
                        "each file keeps its own history, quarantine and resume (rename one to "
                        "tell them apart)"]
    second = json.loads(out)["run_id"]

    code, out, _ = run_cli(capsys, "runs")
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "test_pipeline (a)" in lines[first] and "test_pipeline (b)" in lines[second]
    code, out, _ = run_cli(capsys, "runs", "--json")
    assert {r["run_id"]: r["pipeline_path"] for r in json.loads(out)} == {
        first: str(original), second: str(copy)}
    code, out, _ = run_cli(capsys, "quarantine", "list")
    assert "test_pipeline (a)" in out and "test_pipeline (b)" in out


async def test_each_file_has_its_own_last_run(tmp_path, llm_server):
    original, copy = two_copies(tmp_path, llm_server)
    async with Workspace(tmp_path) as workspace:
        ran = await workspace.run_to_end(workspace.load(original))
        last = await workspace.last_runs_by_file()
    assert last[pipeline_key(original)].run_id == ran.run_id
    assert pipeline_key(copy) not in last and "test_pipeline" not in last


def test_one_file_alone_is_shown_by_its_name(tmp_path, llm_server, capsys):
    original, _ = two_copies(tmp_path, llm_server)
    assert run_cli(capsys, "--run", str(original))[0] == 0
    code, out, _ = run_cli(capsys, "runs")
    assert "test_pipeline " in out and "test_pipeline (" not in out
