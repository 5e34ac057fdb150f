"""What the workbench adds to core.api: prompt versions and the A/B, run series, run comparison,
and history paging — against real files, a real store and the loopback LLM server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.api import Workspace
from core.errors import UsageError
from core.prompts import content_hash
from tests.pipelines import reply, write_pipeline

# The model is told the truth for even records and the opposite for odd ones.
TRUTHFUL = 'Classify.\n{{ input.text }}\nreply: {"sentiment": "{{ input.expected }}"}\n'


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("positive" if i % 2 == 0 else "negative")} for i in range(count)]


async def test_saving_a_prompt_writes_the_file_and_stores_both_versions(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(2))
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(path)
        before = workspace.prompt_source(loaded)
        assert before.path == path.parent / "prompt.j2"
        saved = await workspace.save_prompt(loaded, TRUTHFUL)
        assert saved.changed and saved.previous_text == before.text
        assert saved.previous_hash == before.hash and saved.hash == content_hash(TRUTHFUL)
        assert (path.parent / "prompt.j2").read_text() == TRUTHFUL
        store = await workspace.store()
        assert await store.get_version(saved.hash) == ("prompt", TRUTHFUL)
        assert await store.get_version(saved.previous_hash) == ("prompt", before.text)
        again = await workspace.save_prompt(loaded, TRUTHFUL)
        assert not again.changed
    assert not list((path.parent).glob(".*loom-tmp"))


async def test_the_prompt_ab_names_the_records_that_changed_verdict(tmp_path: Path,
                                                                    llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(4), base_url=llm_server.base_url)
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(path)
        records = await workspace.preview(loaded, limit=4)
        old_text = workspace.prompt_source(loaded).text
        comparison = await workspace.compare_prompts(loaded, records, old_text, TRUTHFUL)
        assert [row.record_id for row in comparison.changed] == ["r1", "r3"]
        assert all(row.label == "fail→pass" for row in comparison.changed)
        assert comparison.fixed == 2 and comparison.broken == 0
        assert "matches" in comparison.changed[0].before_reason
        assert comparison.changed[0].after_reason is None
        # Judging the same sample again is answered from the cache.
        calls = llm_server.count
        again = await workspace.compare_prompts(loaded, records, TRUTHFUL, old_text)
        assert llm_server.count == calls
        assert [row.label for row in again.changed] == ["pass→fail", "pass→fail"]


async def test_run_series_and_comparison_of_two_real_runs(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(6), base_url=llm_server.base_url)
    async with Workspace(tmp_path) as workspace:
        first = await workspace.run_to_end(workspace.load(path))
        await workspace.save_prompt(workspace.load(path), TRUTHFUL)
        second = await workspace.run_to_end(workspace.load(path, ["transform.temperature=0.5"]))
        series = await workspace.run_series("test_pipeline")
        assert [p.run_id for p in series] == [first.run_id, second.run_id]
        assert series[0].rejection_rate == pytest.approx(0.5) and series[1].rejection_rate == 0
        assert await workspace.count_runs(pipeline="test_pipeline") == 2
        assert (await workspace.last_runs())["test_pipeline"].run_id == second.run_id
        assert await workspace.pipeline_names() == ["test_pipeline"]

        comparison = await workspace.compare_runs(first.run_id, second.run_id[:18])
        config = {row.label: row for row in comparison.config}
        assert config["prompt"].differs and not config["model"].differs
        assert (config["temperature"].a, config["temperature"].b) == (None, 0.5)  # as written: unset is the default
        results = {row.label: row for row in comparison.results}
        assert (results["quarantined"].a, results["quarantined"].b) == (3, 0)
        evaluators = {row.label: row for row in comparison.evaluators}
        assert (evaluators["matches"].a, evaluators["matches"].b) == (0.5, 1.0)
        assert any(line.startswith("+") and "input.expected" in line
                   for line in comparison.prompt_diff)
        with pytest.raises(UsageError, match="no run nope"):
            await workspace.compare_runs(first.run_id, "nope")


async def test_concurrent_callers_share_one_store(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    try:
        stores = await asyncio.gather(*(workspace.store() for _ in range(5)))
        assert len({id(store) for store in stores}) == 1
    finally:
        await workspace.close()
