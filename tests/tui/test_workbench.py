"""The workbench: records, the prompt and its rendering, the live output on a sample, and the
prompt A/B on save — against the loopback LLM server."""

from __future__ import annotations

from pathlib import Path

from core.api import Workspace
from core.prompts import content_hash
from core.records import Outcome
from loom_tui.app import LoomApp
from loom_tui.messages import SampleEvaluated
from loom_tui.screens.run import RunScreen
from loom_tui.screens.workbench import WorkbenchScreen
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.rendered_prompt import RenderedPrompt
from loom_tui.widgets.sample_output import SampleOutput
from tests.pipelines import reply, write_pipeline
from tests.tui.conftest import SIZE, wait_for

TRUTHFUL = 'Classify.\n{{ input.text }}\nreply: {"sentiment": "{{ input.expected }}"}\n'


def rows(count: int) -> list[dict[str, str]]:
    # Odd records answer "negative" where the truth says "positive": they fail.
    return [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("positive" if i % 2 == 0 else "negative")} for i in range(count)]


async def open_workbench(app: LoomApp, pilot, path: Path) -> WorkbenchScreen:
    app.open_pipeline(path)
    await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen), what="workbench")
    screen = app.screen
    output = screen.query_one(SampleOutput)
    rendered = screen.query_one(RenderedPrompt)
    await wait_for(pilot, lambda: len(output.results) > 0 and not output.busy
                   and rendered.result is not None, what="the first sample and render")
    return screen  # type: ignore[return-value]


def verdicts(screen: WorkbenchScreen) -> dict[str, bool]:
    return {r.record.id: r.outcome is Outcome.LOADED
            for r in screen.query_one(SampleOutput).results}


async def test_opening_shows_records_prompt_rendering_and_output(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(7), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_workbench(app, pilot, path)
        table = screen.query_one("#records-table", PagedTable)
        assert [row.item.id for row in table.rows] == [f"r{i}" for i in range(7)]
        assert screen.query_one(PromptEditor).text == (path.parent / "prompt.j2").read_text()
        rendered = screen.query_one(RenderedPrompt).result
        assert rendered.messages[-1]["content"].startswith("Classify this review.\ntext 0")
        # The sample: the picked record first, five of them, every score shown.
        assert list(verdicts(screen)) == ["r0", "r1", "r2", "r3", "r4"]
        assert verdicts(screen) == {"r0": True, "r1": False, "r2": True, "r3": False, "r4": True}
        result = screen.query_one(SampleOutput).results[1]
        assert [s.evaluator for s in result.scores] == ["label_ok", "matches"]
        assert result.reason.startswith("all_pass failed: matches")
        # Picking another record puts it first.
        table.cursor = 3
        await wait_for(pilot, lambda: list(verdicts(screen))[:1] == ["r3"]
                       and "text 3" in screen.query_one(RenderedPrompt).result.messages[-1]
                       ["content"], what="r3 first, rendered")


async def test_typing_rerenders_and_refreshes_the_output(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(4), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    messages = []
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        screen = await open_workbench(app, pilot, path)
        editor = screen.query_one(PromptEditor)
        await pilot.press("i")  # editing is a mode: i (or enter on the prompt) starts it
        assert editor.has_focus and editor.editing
        editor.load_text(TRUTHFUL)
        # The render and the sample are separate workers: either may land first.
        expected = 'Classify.\ntext 0\nreply: {"sentiment": "positive"}'
        await wait_for(pilot, lambda: all(verdicts(screen).values())
                       and (screen.query_one(RenderedPrompt).result.messages or [{}])[-1]
                       .get("content") == expected, what="every record passes, re-rendered")
        assert "unsaved" in str(screen.query_one("#prompt-pane").border_subtitle)
        # Real keystrokes go through the same path: the buffer changes, the render follows.
        editor.move_cursor(editor.document.end)
        await pilot.press("h", "i")
        await wait_for(pilot, lambda: screen.query_one(RenderedPrompt).result.messages[-1]
                       ["content"].endswith("hi"), what="the typed text rendered")
        # Nothing was written: the file is untouched until ctrl+s.
        assert (path.parent / "prompt.j2").read_text() != editor.text
    assert any(isinstance(m, SampleEvaluated) for m in messages)


async def test_template_errors_show_inline_with_their_line(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_workbench(app, pilot, path)
        rendered = screen.query_one(RenderedPrompt)
        screen.query_one(PromptEditor).load_text("line one\n{% if %}\n")
        await wait_for(pilot, lambda: rendered.result.messages is None, what="the syntax error")
        assert rendered.result.error_line == 2
        assert "error on line 2" in str(screen.query_one("#prompt-pane").border_subtitle)
        screen.query_one(PromptEditor).load_text("one\ntwo {{ input.nope }}\n")
        await wait_for(pilot, lambda: rendered.result.messages is None
                       and "nope" in rendered.result.error, what="the undefined variable")
        assert rendered.result.error_line == 2
        # The output says so per record, from the same path a run takes: no crash.
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.results and all(
            r.reason and "nope" in r.reason for r in output.results), what="per-record errors")
        assert isinstance(app.screen, WorkbenchScreen)


async def test_saving_stores_the_version_and_shows_changed_verdicts(tmp_path: Path,
                                                                    llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(4), base_url=llm_server.base_url)
    before = (path.parent / "prompt.j2").read_text()
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_workbench(app, pilot, path)
        screen.query_one(PromptEditor).load_text(TRUTHFUL)
        await pilot.press("ctrl+s")
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.comparison is not None, what="the A/B")
        changed = {row.record_id: row.label for row in output.comparison.changed}
        assert changed == {"r1": "fail→pass", "r3": "fail→pass"}
        assert all(verdicts(screen).values())
        assert screen.query_one("#prompt-pane").border_subtitle == "saved"
    assert (path.parent / "prompt.j2").read_text() == TRUTHFUL
    async with Workspace(tmp_path) as workspace:
        store = await workspace.store()
        assert await store.get_version(content_hash(TRUTHFUL)) == ("prompt", TRUTHFUL)
        assert await store.get_version(content_hash(before)) == ("prompt", before)


async def test_sample_size_and_running_from_the_workbench(tmp_path: Path, llm_server) -> None:
    path = write_pipeline(tmp_path / "p", rows=rows(12), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_workbench(app, pilot, path)
        screen.query_one("#records-table", PagedTable).focus()
        await pilot.press("plus")
        await wait_for(pilot, lambda: len(verdicts(screen)) == 10, what="ten records judged")
        assert "sample of 10" in str(screen.query_one("#output-pane").border_title)
        await pilot.press("minus", "minus")
        await wait_for(pilot, lambda: len(verdicts(screen)) == 3, what="three records judged")
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen)
                       and app.screen.summary is not None, what="the run")
        assert app.screen.summary.loaded == 6
