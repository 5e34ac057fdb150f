"""Record-level review: the workbench's record inspector; in the quarantine, approve and
discard moving on to the next record, edit-and-approve that runs the evaluators first and
shows the input it fixes (an invalid answer as the model gave it); template errors in plain
words; the Secrets screen naming the keys providers read by themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import TextArea

from core.api import Workspace
from loom_tui.app import LoomApp
from loom_tui.screens.edit_output import EditOutputScreen
from loom_tui.screens.inspect import RecordInspector
from loom_tui.screens.quarantine import QuarantineScreen
from loom_tui.screens.workbench import WorkbenchScreen
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.rendered_prompt import RenderedPrompt
from loom_tui.widgets.sample_output import SampleOutput
from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.tui.conftest import SIZE, text_of, wait_for

INVALID = "Sentiment: negative. It broke."


def rows(count: int) -> list[dict[str, str]]:
    # r0, r3, r6...: the answer disagrees with the truth; r4 answers no JSON at all.
    out = []
    for i in range(count):
        answer = reply("negative" if i % 3 == 0 else "positive")
        out.append({"id": f"r{i}", "text": f"text {i}", "expected": "positive",
                    "reply": INVALID if i == 4 else answer})
    return out


@pytest.fixture
async def quarantined(tmp_path: Path, llm_server):
    path = write_pipeline(tmp_path / "p", rows=rows(10), base_url=llm_server.base_url)
    async with Workspace(tmp_path) as workspace:
        summary = await workspace.run_to_end(workspace.load(path))
    assert summary.quarantined == 5  # r0 r3 r4 r6 r9
    return path


async def open_quarantine(app: LoomApp, pilot, count: int) -> QuarantineScreen:
    await pilot.press("f3")
    await wait_for(pilot, lambda: isinstance(app.screen, QuarantineScreen), what="quarantine")
    table = app.screen.query_one(PagedTable)
    await wait_for(pilot, lambda: len(table.rows) == count, what=f"{count} rows")
    return app.screen  # type: ignore[return-value]


def status_of(screen: QuarantineScreen, record_id: str) -> str:
    return next(row.item.status for row in screen.query_one(PagedTable).rows
                if row.item.record_id == record_id)


async def test_three_approvals_in_a_row_each_move_on(tmp_path: Path, quarantined) -> None:
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 5)
        table = screen.query_one(PagedTable)
        order = [row.item.record_id for row in table.rows]
        for i, record_id in enumerate(order[:3]):
            assert table.highlighted.item.record_id == record_id
            await pilot.press("a")
            await wait_for(pilot, lambda record_id=record_id, i=i: status_of(screen, record_id)
                           == "approved" and table.cursor == i + 1,
                           what=f"{record_id} approved, moved on")
        assert table.highlighted.item.record_id == order[3]
        await pilot.press("d")
        await wait_for(pilot, lambda: app.screen is not screen, what="the question")
        await pilot.click("#confirm-yes")
        await wait_for(pilot, lambda: status_of(screen, order[3]) == "discarded"
                       and table.cursor == 4, what="discarded, moved on")


async def test_the_quarantine_detail_shows_the_record_whole(tmp_path: Path, quarantined) -> None:
    """As the workbench's inspector does: every input field, the prompt it was sent, the raw
    answer, the output, every score."""
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 5)
        detail = screen.query_one("#q-detail")
        await wait_for(pilot, lambda: detail.actions is not None, what="the detail")
        row = detail.row
        shown = text_of(detail.query_one("#detail-text"), 200)
        for field, value in row.input.items():
            assert f"{field}" in shown and str(value) in shown
        assert "── rendered prompt ──" in shown and "── user ──" in shown
        assert row.messages and row.messages[-1]["content"].splitlines()[0] in shown
        assert "── raw answer ──" in shown and row.raw_output in shown
        assert "── output ──" in shown and "── scores ──" in shown
        assert all(score["evaluator"] in shown for score in row.scores)


async def test_edit_and_approve_runs_the_evaluators_first(tmp_path: Path, quarantined) -> None:
    path = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 5)
        assert screen.query_one(PagedTable).highlighted.item.record_id == "r0"
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EditOutputScreen), what="editor")
        dialog = app.screen
        # The input it fixes is on screen.
        shown = text_of(dialog.query_one("#edit-input-text"))
        assert "text: text 0" in shown and "expected: positive" in shown
        editor = dialog.query_one(TextArea)
        # Valid for the schema, but still wrong for the evaluators: it says so, loads nothing.
        editor.load_text('{"sentiment": "neutral"}')
        await pilot.press("ctrl+s")
        error = dialog.query_one("#edit-error")
        await wait_for(pilot, lambda: "still fails" in text_of(error), what="the check")
        assert "matches 0.00 < 1.00" in text_of(error)
        assert str(dialog.query_one("#edit-approve").label) == "Approve anyway"
        assert app.screen is dialog
        assert "r0" not in {row["id"] for row in read_jsonl(path.parent / "out/results.jsonl")}
        # Fixed: it passes and loads at once.
        editor.load_text('{"sentiment": "positive"}')
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen
                       and status_of(screen, "r0") == "approved", what="approved")
    loaded = {row["id"]: row for row in read_jsonl(path.parent / "out/results.jsonl")}
    assert loaded["r0"]["sentiment"] == "positive"


async def test_approve_anyway_after_the_warning(tmp_path: Path, quarantined) -> None:
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 5)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EditOutputScreen), what="editor")
        dialog = app.screen
        dialog.query_one(TextArea).load_text('{"sentiment": "neutral"}')
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "still fails" in text_of(dialog.query_one("#edit-error")),
                       what="the check")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen
                       and status_of(screen, "r0") == "approved", what="approved anyway")


async def test_an_invalid_answer_is_edited_from_the_raw_text(tmp_path: Path,
                                                            quarantined) -> None:
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_quarantine(app, pilot, 5)
        table = screen.query_one(PagedTable)
        table.cursor = [row.item.record_id for row in table.rows].index("r4")
        await pilot.pause()
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, EditOutputScreen), what="editor")
        assert app.screen.query_one(TextArea).text.strip() == INVALID
        assert "not valid output" in text_of(app.screen.query_one("#edit-raw-note"))


async def test_the_record_inspector(tmp_path: Path, llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(8), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: bool(table.rows), what="the pipelines")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen)
                       and app.screen.query_one(SampleOutput).results, what="the workbench")
        workbench = app.screen
        await pilot.press("enter")  # on the records: the picked record, whole
        await wait_for(pilot, lambda: isinstance(app.screen, RecordInspector)
                       and app.screen.rendered is not None and app.screen.result is not None,
                       what="the inspector")
        inspector = app.screen
        shown = text_of(inspector.query_one("#inspect-text"), 120)
        for part in ("r0", "── input ──", "expected", "── rendered prompt ──",
                     "Classify this review.", "── raw answer ──", "── output ──",
                     "── scores ──", "label_ok", "matches", "expected 'positive'"):
            assert part in shown, (part, shown)
        # n and p step through the list; a record outside the sample is run here.
        for _ in range(6):
            await pilot.press("n")
        await wait_for(pilot, lambda: inspector.record.id == "r6" and inspector.result
                       is not None and inspector.result.record.id == "r6", what="r6 run")
        assert "✗" in text_of(inspector.query_one("#inspect-text"), 120)
        await pilot.press("escape")
        assert app.screen is workbench
        assert workbench.query_one("#records-table", PagedTable).highlighted.item.id == "r6"
        assert workbench.query_one(PromptEditor).text == (tmp_path / "p/prompt.j2").read_text()


async def test_template_errors_in_plain_words(tmp_path: Path, llm_server) -> None:
    write_pipeline(tmp_path / "p", rows=rows(3), base_url=llm_server.base_url)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        app.open_pipeline(tmp_path / "p" / "pipeline.yaml")
        await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen)
                       and app.screen.query_one(SampleOutput).results, what="the workbench")
        screen = app.screen
        screen.query_one(PromptEditor).load_text("one\ntwo {{ input.nope }}\n")
        rendered = screen.query_one(RenderedPrompt)
        await wait_for(pilot, lambda: rendered.result is not None
                       and rendered.result.messages is None, what="the error")
        assert rendered.result.error == ("line 2: input has no field 'nope' "
                                         "(fields: id, text, expected, reply)")
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.results and all(
            "input has no field 'nope'" in (r.reason or "") for r in output.results),
                       what="the same words per record")


def test_secrets_lists_the_keys_providers_read_by_themselves(tmp_path: Path) -> None:
    write_pipeline(tmp_path / "a", rows=rows(1), transform={"provider": "openai",
                                                            "api_key": None, "base_url": None})
    (tmp_path / "b").mkdir()
    path = write_pipeline(tmp_path / "b", rows=rows(1),
                          transform={"provider": "anthropic", "model": "claude-haiku-4-5",
                                     "api_key": None, "base_url": None})
    path.write_text(path.read_text().replace("name: test_pipeline", "name: other"))
    references = Workspace(tmp_path).secret_references()
    assert references["OPENAI_API_KEY"] == ["test_pipeline"]
    assert references["ANTHROPIC_API_KEY"] == ["other"]


async def test_the_prompt_ab_per_record_side_by_side(tmp_path: Path, llm_server) -> None:
    from loom_tui.screens.record_diff import RecordDiffScreen

    path = write_pipeline(tmp_path / "p", rows=rows(6), base_url=llm_server.base_url)
    truthful = 'Classify.\n{{ input.text }}\nreply: {"sentiment": "{{ input.expected }}"}\n'
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        app.open_pipeline(path)
        await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen)
                       and app.screen.query_one(SampleOutput).results, what="the workbench")
        screen = app.screen
        assert not screen.check_action("diff", ())  # nothing compared yet
        screen.query_one(PromptEditor).load_text(truthful)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.comparison is not None, what="the A/B")
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, RecordDiffScreen), what="the diff")
        diff = app.screen
        table = diff.query_one(PagedTable)
        # r0, r3 (fail→pass) and r4 (no JSON → pass) first; the unchanged after them.
        order = [row.key for row in table.rows]
        assert order[:3] == ["r0", "r3", "r4"] and set(order[3:]) == {"r1", "r2"}
        await pilot.pause()
        a = text_of(diff.query_one("#diff-a-text"))
        b = text_of(diff.query_one("#diff-b-text"))
        assert "✗ fail" in a and '"negative"' in a
        assert "✓ pass" in b and '"positive"' in b
        await pilot.press("n")
        assert table.highlighted.key == "r3"
        await pilot.press("n", "n")  # past the last change: back to the first
        assert table.highlighted.key == "r0"
        await pilot.press("p")
        assert table.highlighted.key == "r4"
        await pilot.press("escape")
        assert app.screen is screen


async def test_screens_read_the_store_again_when_you_come_back(tmp_path: Path,
                                                                quarantined) -> None:
    """A run and an approval made elsewhere (another terminal, the CLI) show on return."""
    from loom_tui.screens.history import HistoryScreen

    path = quarantined
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
        history = app.screen.query_one(PagedTable)
        await wait_for(pilot, lambda: history.total == 1, what="one run")
        screen = await open_quarantine(app, pilot, 5)
        first = screen.query_one(PagedTable).rows[0].item
        async with Workspace(tmp_path) as workspace:
            await workspace.run_to_end(workspace.load(path))
            await workspace.approve([first.id])
        await pilot.press("f4")
        await wait_for(pilot, lambda: history.total == 2 and len(history.rows) == 2,
                       what="the new run listed")
        await pilot.press("f3")
        table = screen.query_one(PagedTable)
        await wait_for(pilot, lambda: any(row.item.id == first.id and row.item.status ==
                                          "approved" for row in table.rows)
                       or first.id not in {row.item.id for row in table.rows},
                       what="the approval shown")
