"""core.api.Workspace: what the workbench calls, against real files and the loopback server."""

from __future__ import annotations

import json
from pathlib import Path

from core.api import Workspace
from core.engine import RunController, RunOptions
from core.events import BatchLoaded, Progress, RecordFinished, RunFinished, RunStarted
from core.records import Outcome, Stage
from tests.pipelines import reply, write_pipeline


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("positive" if i % 4 else "negative")} for i in range(count)]


async def test_pipelines_are_listed_with_their_validation_state(tmp_path: Path) -> None:
    good = write_pipeline(tmp_path / "good", rows=rows(2))
    bad = write_pipeline(tmp_path / "bad", rows=rows(2))
    bad.write_text(bad.read_text().replace("prompt: prompt.j2", "prompt: missing.j2"))
    (tmp_path / "notes.yaml").write_text("just: a config\n")
    (tmp_path / ".venv").mkdir()
    write_pipeline(tmp_path / ".venv" / "hidden", rows=rows(1))

    entries = {e.path: e for e in Workspace(tmp_path).pipelines()}
    assert set(entries) == {good.resolve(), bad.resolve()}
    assert entries[good.resolve()].valid
    assert entries[bad.resolve()].name == "test_pipeline"
    assert "prompt file not found: missing.j2" in entries[bad.resolve()].error


async def test_preview_reads_only_the_page_asked_for(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(120))
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(path)
        page = await workspace.preview(loaded, limit=10, offset=50)
    assert [r.id for r in page] == [f"r{i}" for i in range(50, 60)]


async def test_render_shows_the_prompt_or_the_error_with_its_line(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(3))
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(path)
        record = (await workspace.preview(loaded, limit=1))[0]
        ok = workspace.render(loaded, record)
        assert ok.error is None and "text 0" in ok.messages[-1]["content"]
        edited = workspace.render(loaded, record, "New: {{ input.text | upper }}")
        assert edited.messages[-1]["content"] == "New: TEXT 0"
        broken = workspace.render(loaded, record, "a\n{% if %}")
        assert broken.messages is None and broken.error_line == 2
        undefined = workspace.render(loaded, record, "a\nb {{ input.nope }}")
        assert undefined.error_line == 2 and "nope" in undefined.error


async def test_run_sample_judges_an_edited_prompt_without_loading(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(4), base_url=llm_server.base_url)
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(path)
        records = await workspace.preview(loaded, limit=4)
        results = await workspace.run_sample(loaded, records)
        assert [r.outcome for r in results] == [Outcome.QUARANTINED, Outcome.LOADED,
                                                Outcome.LOADED, Outcome.LOADED]
        assert results[0].stage is Stage.EVALUATE
        assert results[1].scores[0].passed
        # The same sample again comes from the response cache: no new calls.
        calls = llm_server.count
        again = await workspace.run_sample(loaded, records)
        assert llm_server.count == calls
        assert all(r.transform.cached for r in again)
        edited = await workspace.run_sample(
            loaded, records, prompt_text='reply: {"sentiment": "positive"}')
        assert all(r.outcome is Outcome.LOADED for r in edited)
        assert await workspace.runs() == []
    assert not (tmp_path / "p" / "out").exists()


async def test_run_streams_events_and_ends_with_the_summary(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(40), base_url=llm_server.base_url)
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(path)
        events = [event async for event in workspace.run(loaded)]
        assert isinstance(events[0], RunStarted)
        assert isinstance(events[-1], RunFinished)
        assert sum(isinstance(e, RecordFinished) for e in events) == 40
        assert any(isinstance(e, BatchLoaded) for e in events)
        assert any(isinstance(e, Progress) for e in events)
        summary = events[-1].summary
        assert (summary.loaded, summary.quarantined) == (30, 10)
        run = await workspace.get_run(summary.run_id[:12])
        assert run.run_id == summary.run_id and run.status == "success"
        assert run.config["transform"]["api_key"] == "***"  # a literal key is never stored
        assert run.prompt_hash == summary_prompt_hash(path)


def summary_prompt_hash(path: Path) -> str:
    from core.prompts import content_hash

    return content_hash((path.parent / "prompt.j2").read_text())


async def test_a_cancelled_run_is_recorded_and_every_record_is_accounted_for(
        tmp_path: Path, llm_server) -> None:
    llm_server.latency_s = 0.05
    path = write_pipeline(tmp_path / "p", rows=rows(400), base_url=llm_server.base_url,
                          transform={"concurrency": 4})
    controller = RunController()
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(path)
        seen = 0
        async for event in workspace.run(loaded, RunOptions(), controller=controller):
            if isinstance(event, RecordFinished):
                seen += 1
                if seen == 20:
                    controller.cancel()
            if isinstance(event, RunFinished):
                summary = event.summary
        assert summary.status == "cancelled"
        assert summary.extracted == summary.loaded + summary.quarantined + summary.skipped
        assert summary.skipped > 0
        assert llm_server.count < 400
        run = await workspace.get_run(summary.run_id)
        assert run.status == "cancelled"
        assert run.skipped == summary.skipped
    written = (tmp_path / "p" / "out" / "results.jsonl").read_text().splitlines()
    assert len(written) == summary.loaded
    assert all(json.loads(line)["sentiment"] == "positive" for line in written)


async def test_an_unknown_model_costs_null_with_one_warning(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(5), base_url=llm_server.base_url,
                          transform={"model": "my-finetune-v3"})
    async with Workspace(tmp_path) as workspace:
        summary = await workspace.run_to_end(workspace.load(path))
    assert summary.cost_usd is None
    assert len([w for w in summary.warnings if "my-finetune-v3" in w]) == 1
    assert summary.to_json()["cost_usd"] is None


async def test_progress_reports_the_adaptive_concurrency(tmp_path: Path, llm_server) -> None:
    # Every call of the first wave is refused once: the limit halves, and every snapshot after
    # that shows the lowered value until successes grow it back.
    llm_server.faults.retry_after_s = 0.01
    llm_server.script(["429:0.01"] * 8)
    path = write_pipeline(tmp_path / "p", rows=rows(8), base_url=llm_server.base_url,
                          transform={"concurrency": 8})
    async with Workspace(tmp_path) as workspace:
        events = [event async for event in workspace.run(workspace.load(path))]
    summary = events[-1].summary
    last = [e for e in events if isinstance(e, Progress)][-1]
    assert summary.throttled == 8 and summary.concurrency_min == 4
    assert last.concurrency == summary.concurrency_final
    assert 4 <= summary.concurrency_final <= 8


async def test_progress_ends_at_the_records_the_source_held(tmp_path: Path, llm_server) -> None:
    """A CSV's line count is only a hint (a quoted value may hold newlines): once the source
    is read to its end, progress counts against the records it held (was 5/15 at the end)."""
    many_lines = [dict(row, text=f"line one\nline two\nof {row['id']}") for row in rows(5)]
    path = write_pipeline(tmp_path / "p", rows=many_lines, base_url=llm_server.base_url)
    async with Workspace(tmp_path) as workspace:
        events = [event async for event in workspace.run(workspace.load(path))]
    last = [e for e in events if isinstance(e, Progress)][-1]
    assert last.total_hint == 5 == last.loaded + last.quarantined  # the lines' guess: 15
