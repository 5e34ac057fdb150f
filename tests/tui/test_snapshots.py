"""Snapshots of every screen at 80×24 (what a laptop's split pane gives) and 160×45 (a
full-screen terminal), with deterministic data (fixed run ids and times, cached model
answers): a layout or style regression shows up as an SVG diff.

Update after a deliberate change with `pytest tests/tui/test_snapshots.py --snapshot-update`,
then look at the SVGs (the report pytest-textual-snapshot writes on failure shows both)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest

from core.api import Workspace
from core.events import Progress, RunStarted, RunSummary
from core.store import Store
from loom_tui.app import LoomApp
from loom_tui.messages import RunBegan, RunEnded, RunProgressed
from loom_tui.screens.run import RunScreen
from loom_tui.widgets.paged_table import PagedTable
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.sample_output import SampleOutput
from loom_tui.messages import RunCouldNotStart
from tests.tui.conftest import ROOT, copy_sample, settle, wait_for, write_invalid
from tests.tui.data import T0, seed_everything, seed_history

EDITED = "\n(Be strict: a review that only states facts is neutral.)\n"


@pytest.fixture(params=[(80, 24), (160, 45)], ids=["80x24", "160x45"])
def size(request: pytest.FixtureRequest) -> tuple[int, int]:
    return request.param


@pytest.fixture
def workspace_folder(tmp_path: Path) -> Path:
    """A folder named the same in every run (the top bar shows its name)."""
    folder = tmp_path / "workspace"
    folder.mkdir()
    return folder


def seeded() -> list[str]:
    async def go() -> list[str]:
        async with await Store.open() as store:
            return await seed_history(store)
    return asyncio.run(go())


def warm_cache(pipeline: Path, prompts: list[str | None], count: int = 5) -> None:
    """Answer the sample once before the snapshot, so the screen shows cached results (no
    wall-clock latency on screen)."""
    async def go() -> None:
        async with Workspace(pipeline.parent.parent) as workspace:
            loaded = workspace.load(pipeline)
            records = await workspace.preview(loaded, limit=count)
            for prompt in prompts:
                await workspace.run_sample(loaded, records, prompt_text=prompt)
    asyncio.run(go())


async def until_listed(pilot) -> None:
    table = pilot.app.screen.query_one(PagedTable)
    await wait_for(pilot, lambda: table.rows and table.total is not None, what="rows")
    await settle(pilot)


def test_pipelines(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    copy_sample(workspace_folder)
    write_invalid(workspace_folder)
    seeded()
    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=until_listed)


def test_pipelines_light(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    copy_sample(workspace_folder)
    write_invalid(workspace_folder)
    seeded()
    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=until_listed,
                        press=["ctrl+t"])


async def open_workbench(pilot) -> None:
    await until_listed(pilot)
    await pilot.press("enter")
    await wait_for(pilot, lambda: pilot.app.screen.query(SampleOutput)
                   and pilot.app.screen.query_one(SampleOutput).results, what="the sample")
    await settle(pilot)


def test_workbench(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])
    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=open_workbench)


def test_workbench_template_error(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def broken(pilot) -> None:
        await open_workbench(pilot)
        editor = pilot.app.screen.query_one(PromptEditor)
        editor.load_text(editor.text.replace("{{ input.text }}", "{{ input.text }"))
        await wait_for(pilot, lambda: "error" in str(
            pilot.app.screen.query_one("#prompt-pane").border_subtitle), what="the error")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=broken)


def test_workbench_after_save_shows_changed_verdicts(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)
    # A variant the demo cassette has answers for: stricter about neutral, R004's "loud, but
    # worth it" reads as mixed — a pass→fail A/B, all from recorded answers.
    variant = (pipeline.parent / "prompts" / "variants" / "strict_neutral.j2").read_text()
    warm_cache(pipeline, [None])

    async def saved(pilot) -> None:
        await open_workbench(pilot)
        screen = pilot.app.screen
        screen.query_one(PromptEditor).load_text(variant)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.query_one(SampleOutput).comparison is not None,
                       what="the A/B")
        await settle(pilot)
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=saved)


def _run_messages(path: Path) -> tuple[RunStarted, Progress, RunSummary]:
    run_id = "20260302-170000-00beef"
    started = RunStarted(run_id=run_id, pipeline="customer_sentiment", pipeline_path=str(path),
                         started_at=T0, model="gpt-4o-mini", provider="openai",
                         prompt_hash="7df814db4b" + "0" * 54, source="csv://data/reviews.csv",
                         destination="csv://out/sentiment.csv", budget_usd=0.05)
    progress = Progress(run_id=run_id, extracted=2400, transformed=1730, evaluated=1712,
                        loaded=1540, quarantined=158, skipped=0, in_flight=16, elapsed_s=41.5,
                        records_per_s=40.9, cost_usd=0.0389, budget_usd=0.05,
                        input_tokens=391_000, output_tokens=51_000, llm_calls=1731,
                        cache_hits=12, latency_p50_s=0.41, latency_p95_s=1.22, concurrency=16,
                        recent_errors=(
                            "R1187: all_pass failed: matches_truth 0.00 < 1.00 (expected "
                            "'neutral', found 'positive')",
                            "R1203: output invalid after one repair: not JSON (Expecting "
                            "value): 'Sentiment: negative.'",
                            "R1311: all_pass failed: confident 0.00 < 1.00 (0.45 is below "
                            "min 0.6)"), total_hint=4000)
    summary = RunSummary(run_id=run_id, pipeline="customer_sentiment", status="partial",
                         status_reason="rejection rate 9.3% is above max_rejection_rate 5.0%",
                         extracted=4000, loaded=3620, quarantined=371, skipped=9,
                         cost_usd=0.0497, cost_by_stage={"transform": 0.0497},
                         cost_by_model={"gpt-4o-mini": 0.0497}, input_tokens=652_000,
                         output_tokens=85_000, llm_calls=3998, cache_hits=14, duration_s=97.3,
                         latency_p50_s=0.40, latency_p95_s=1.19, latency_p99_s=2.4)
    return started, progress, summary


def _run_screen(workspace_folder: Path, *, finished: bool):
    pipeline = copy_sample(workspace_folder)
    started, progress, summary = _run_messages(pipeline)

    async def live(pilot) -> None:
        await until_listed(pilot)
        screen = RunScreen(pipeline, start=False)
        await pilot.app.push_screen(screen)
        screen.post_message(RunBegan(started))
        screen.post_message(RunProgressed(progress))
        if finished:
            # As the engine does: a last snapshot, then the summary.
            screen.post_message(RunProgressed(dataclasses.replace(
                progress, extracted=4000, transformed=3991, evaluated=3950, loaded=3620,
                quarantined=371, skipped=9, in_flight=0, cost_usd=0.0497)))
            screen.post_message(RunEnded(summary))
        await settle(pilot)

    return live


def test_run_in_progress(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    assert snap_compare(LoomApp(workspace_folder), terminal_size=size,
                        run_before=_run_screen(workspace_folder, finished=False))


def test_run_summary(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    assert snap_compare(LoomApp(workspace_folder), terminal_size=size,
                        run_before=_run_screen(workspace_folder, finished=True))


async def open_section(pilot, key: str) -> None:
    await pilot.press(key)
    await pilot.pause()
    await until_listed(pilot)


def test_quarantine(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    seeded()

    async def shown(pilot) -> None:
        await open_section(pilot, "f3")
        detail = pilot.app.screen.query_one("#q-detail")
        await wait_for(pilot, lambda: detail.actions == [], what="the detail")

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=shown)


def test_quarantine_marked_for_a_bulk_action(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    seeded()

    async def marked(pilot) -> None:
        await open_section(pilot, "f3")
        await pilot.press("space", "space", "down", "space")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=marked)


def test_quarantine_edit_output(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    seeded()

    async def editing(pilot) -> None:
        await open_section(pilot, "f3")
        await pilot.press("e")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=editing)


def test_history(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    """A shard group on top (summed, its runs beneath), alerts, and the judges' agreement."""
    asyncio.run(seed_everything())

    async def shown(pilot) -> None:
        await open_section(pilot, "f4")
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.charted == "customer_sentiment"
                       and screen.query_one("#h-judge-panel").agreements, what="charts, judges")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=shown)


def test_history_run_with_alerts(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    ids, _ = asyncio.run(seed_everything())

    async def shown(pilot) -> None:
        await open_section(pilot, "f4")
        screen = pilot.app.screen
        table = screen.query_one(PagedTable)
        table.cursor = [row.key for row in table.rows].index(ids[2])
        await wait_for(pilot, lambda: screen.charted == "customer_sentiment"
                       and screen.query_one("#h-judge-panel").agreements, what="charts, judges")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=shown)


def test_compare_two_runs(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    ids = seeded()

    async def compared(pilot) -> None:
        await open_section(pilot, "f4")
        table = pilot.app.screen.query_one(PagedTable)
        await pilot.press("space")
        table.cursor = len(ids) - 1
        await pilot.press("space", "c")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "CompareScreen",
                       what="the comparison")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=compared)


def test_help(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    seeded()

    async def helped(pilot) -> None:
        await open_section(pilot, "f3")
        await pilot.press("f1")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=helped)


def test_secrets(snap_compare, size: tuple[int, int], workspace_folder: Path, file_keyring: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Names only: stored ones, one the environment has, one a pipeline needs and nobody has."""
    path = copy_sample(workspace_folder)
    path.write_text(path.read_text().replace(
        "  provider: replay\n", "  provider: replay\n  api_key: ${OPENAI_API_KEY}\n").replace(
        "params:\n", "params:\n  db_password: ${PG_PASSWORD}\n", 1))
    workspace = Workspace(workspace_folder)
    workspace.set_secret("ANTHROPIC_API_KEY", "sk-ant-snapshot-value")
    workspace.set_secret("SLACK_WEBHOOK", "https://hooks.example/snapshot")
    monkeypatch.setenv("PG_PASSWORD", "from-the-environment")

    async def shown(pilot) -> None:
        await open_section(pilot, "f6")

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=shown)


def test_secrets_without_a_keyring(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    import keyring
    from keyring.backends.fail import Keyring as Fail

    previous = keyring.get_keyring()
    keyring.set_keyring(Fail())

    async def shown(pilot) -> None:
        await pilot.press("f6")
        await wait_for(pilot, lambda: pilot.app.screen.listed is not None, what="the keyring")
        await settle(pilot)

    try:
        assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=shown)
    finally:
        keyring.set_keyring(previous)


def test_set_secret_value_is_masked(snap_compare, size: tuple[int, int], workspace_folder: Path,
                                    file_keyring: Path) -> None:
    async def typing(pilot) -> None:
        await pilot.press("f6")
        await wait_for(pilot, lambda: pilot.app.screen.listed is not None, what="the keyring")
        await pilot.press("n", *"OPENAI_API_KEY", "enter", *"sk-do-not-show-me-1234")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=typing)


def test_estimate(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    copy_sample(workspace_folder)

    async def estimated(pilot) -> None:
        await until_listed(pilot)
        await pilot.press("e")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "estimate", None) is not None,
                       what="the estimate")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=estimated)


def test_workbench_llm_judge(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    """review_summaries: an LLM judge's explanation and criteria in the Output pane."""
    target = workspace_folder / "review_summaries"
    shutil.copytree(ROOT / "sample_pipelines" / "review_summaries", target,
                    ignore=shutil.ignore_patterns("out"))
    warm_cache(target / "pipeline.yaml", [None])

    async def opened(pilot) -> None:
        await open_workbench(pilot)
        pilot.app.screen.query_one("#records-table").cursor = 2  # R003: the judge fails it
        await wait_for(pilot, lambda: pilot.app.screen.query_one(SampleOutput).results
                       and pilot.app.screen.query_one(SampleOutput).results[0].record.id == "R003",
                       what="R003 first")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=opened)


def test_workbench_editing(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    """The editing mode: the prompt pane marked, the footer with the editor's keys only."""
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def editing(pilot) -> None:
        await open_workbench(pilot)
        await pilot.press("i")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=editing)


def test_record_inspector(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def inspected(pilot) -> None:
        await open_workbench(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "rendered", None) is not None
                       and pilot.app.screen.result is not None, what="the inspector")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=inspected)


def test_run_with_unsaved_edits_asks(snap_compare, size: tuple[int, int],
                                     workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def asked(pilot) -> None:
        await open_workbench(pilot)
        editor = pilot.app.screen.query_one(PromptEditor)
        editor.load_text(editor.text + EDITED)
        await pilot.pause()
        await pilot.press("f5")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=asked)


def test_quit_with_unsaved_edits_asks(snap_compare, size: tuple[int, int],
                                      workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def asked(pilot) -> None:
        await open_workbench(pilot)
        editor = pilot.app.screen.query_one(PromptEditor)
        editor.load_text(editor.text + EDITED)
        await pilot.pause()
        await pilot.press("ctrl+q")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=asked)


def test_run_could_not_start(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)

    async def failed(pilot) -> None:
        await until_listed(pilot)
        screen = RunScreen(pipeline, start=False)
        await pilot.app.push_screen(screen)
        screen.post_message(RunCouldNotStart(
            "transform.api_key: secret OPENAI_API_KEY is not set (looked in the keyring "
            "(service loom) and the environment)"))
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=failed)


def test_history_empty(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    async def shown(pilot) -> None:
        await pilot.press("f4")
        await pilot.pause()
        await wait_for(pilot, lambda: pilot.app.screen.query_one(PagedTable).total == 0,
                       what="no runs")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder), terminal_size=size, run_before=shown)


def test_workbench_no_recorded_answer(snap_compare, size: tuple[int, int],
                                      workspace_folder: Path) -> None:
    """An edit the demo's cassette has no answer for: the pane says what would answer it."""
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def missed(pilot) -> None:
        await open_workbench(pilot)
        screen = pilot.app.screen
        editor = screen.query_one(PromptEditor)
        editor.load_text(editor.text + EDITED)
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.prompt_text == editor.text and not output.busy,
                       what="the edit's sample")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=missed)


def test_model_switcher(snap_compare, size: tuple[int, int], workspace_folder: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """m: provider openai, its known models, and no key (the null keyring, no variable)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def switching(pilot) -> None:
        from textual.widgets import Select

        await open_workbench(pilot)
        await pilot.press("m")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "ModelSwitcherScreen",
                       what="the switcher")
        switcher = pilot.app.screen
        switcher.query_one("#switcher-provider", Select).value = "openai"
        await wait_for(pilot, lambda: switcher.key is not None
                       and switcher.key.name == "OPENAI_API_KEY", what="the key")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=switching)


def test_prompt_variants(snap_compare, size: tuple[int, int], workspace_folder: Path) -> None:
    pipeline = copy_sample(workspace_folder)
    warm_cache(pipeline, [None])

    async def listed(pilot) -> None:
        await open_workbench(pilot)
        await pilot.press("v")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "VariantsScreen",
                       what="the variants")
        await settle(pilot)

    assert snap_compare(LoomApp(workspace_folder, debounce_s=0.05), terminal_size=size,
                        run_before=listed)
