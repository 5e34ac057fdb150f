"""The workbench answers every edit: prompt variants with recorded answers (v), the words the
output pane says where the cassette has no answer, and the provider/model switcher (m) — on a
copy of the offline sample (provider replay) and the loopback LLM server."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, Select

from core.records import Outcome
from loom_tui.app import LoomApp
from loom_tui.screens.model_switcher import ModelSwitcherScreen
from loom_tui.screens.record_diff import RecordDiffScreen
from loom_tui.screens.variants import VariantsScreen
from loom_tui.screens.workbench import WorkbenchScreen
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.sample_output import SampleOutput
from tests.tui.conftest import SIZE, copy_sample, text_of, wait_for

REPLY = ('\nreply: {"sentiment": "{{ input.expected }}", "confidence": 0.9, '
         '"summary": "Answered by the local server."}\n')


async def open_sample(app: LoomApp, pilot, pipeline: Path) -> WorkbenchScreen:
    app.open_pipeline(pipeline)
    await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen), what="workbench")
    screen = app.screen
    output = screen.query_one(SampleOutput)
    await wait_for(pilot, lambda: len(output.results) == 5 and not output.busy,
                   what="the first sample")
    return screen  # type: ignore[return-value]


def verdicts(screen: WorkbenchScreen) -> dict[str, bool]:
    return {r.record.id: r.outcome is Outcome.LOADED
            for r in screen.query_one(SampleOutput).results}


def status_text(screen: WorkbenchScreen) -> str:
    return " ".join(text_of(screen.query_one("#sample-status"), 100).split())


async def test_v_loads_a_variant_that_answers_offline_with_its_diff(tmp_path: Path) -> None:
    pipeline = copy_sample(tmp_path)
    prompt_file = pipeline.parent / "prompts" / "classify.j2"
    saved = prompt_file.read_text()
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sample(app, pilot, pipeline)
        assert verdicts(screen) == dict.fromkeys(["R001", "R002", "R003", "R004", "R005"], True)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, VariantsScreen), what="variants")
        listed = [v.name for v in app.screen.variants]
        assert listed == ["short_summary", "strict_neutral", "taxonomy_rubric"]
        await pilot.press("down", "enter")  # the first variant, under "the saved prompt"
        await wait_for(pilot, lambda: app.screen is screen, what="back in the workbench")
        whole = (pipeline.parent / "prompts" / "variants" / "short_summary.j2").read_text()
        # The prompt the variant is, without its description line (a save must not keep it).
        variant = whole.split("-#}", 1)[1].lstrip("\n")
        assert whole.startswith("{#- variant:") and screen.query_one(PromptEditor).text == variant
        assert screen.dirty and "unsaved" in str(screen.query_one("#prompt-pane").border_subtitle)
        output = screen.query_one(SampleOutput)
        # Recorded answers: outputs change for every record, and R003's summary is too short.
        await wait_for(pilot, lambda: output.prompt_text == variant and not output.busy,
                       what="the variant's sample")
        assert verdicts(screen) == {"R001": True, "R002": True, "R003": False, "R004": True,
                                    "R005": True}
        assert output.results[0].output["summary"] == "Fast boiling, reliable shut-off: loved."
        assert not any(r.error_type == "CassetteMiss" for r in output.results)
        shown = status_text(screen)
        assert "your edit against the saved prompt: 1 of 5 changed verdict" in shown, shown
        assert "R003 pass→fail" in shown
        # The per-record diff: the saved prompt (A) against the edit (B).
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, RecordDiffScreen), what="the diff")
        diff = app.screen
        assert [row.record_id for row in diff.rows if row.verdict_changed] == ["R003"]
        assert all(row.output_changed for row in diff.rows)  # every summary is shorter
        assert "(your edit)" in str(diff.query_one("#diff-b").border_title)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back")
        # "The saved prompt" takes the editor back to the file; nothing was ever written.
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, VariantsScreen), what="variants")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.query_one(PromptEditor).text == saved
                       and not screen.dirty, what="the saved prompt again")
    assert prompt_file.read_text() == saved


async def test_the_palette_loads_a_variant(tmp_path: Path) -> None:
    pipeline = copy_sample(tmp_path)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sample(app, pilot, pipeline)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"strict neutral")
        commands = app.screen.query_one(CommandList)
        await wait_for(pilot, lambda: commands.option_count > 0, what="hits")
        prompts = [str(commands.get_option_at_index(i).prompt)
                   for i in range(commands.option_count)]
        assert any("Load prompt variant: Strict neutral" in p for p in prompts), prompts
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen and screen.dirty, what="loaded")
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.prompt_text == screen.text and not output.busy,
                       what="the variant's sample")
        # Stricter about neutral: R004's "loud, but worth it" now reads as mixed.
        assert verdicts(screen)["R004"] is False
        assert "R004 pass→fail" in status_text(screen)


async def test_an_edit_with_no_recorded_answer_says_what_would_answer(tmp_path: Path) -> None:
    pipeline = copy_sample(tmp_path)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sample(app, pilot, pipeline)
        editor = screen.query_one(PromptEditor)
        await pilot.press("i")
        editor.move_cursor(editor.document.end)
        await pilot.press(*"Be brief.")
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.prompt_text == editor.text and not output.busy,
                       what="the edit's sample")
        assert all(r.error_type == "CassetteMiss" for r in output.results)
        shown = status_text(screen)
        assert "No recorded answer for this prompt." in shown
        assert "in demo.jsonl cover the shipped prompt and its 3 variants (v loads one)" in shown
        assert "choose a model with a key (f6 stores it) or a local server: press m" in shown
        cards = " ".join(text_of(screen.query_one("#sample-results"), 100).split())
        assert "transform: no recorded answer for this prompt" in cards
        assert "--record" not in shown + cards  # the command line's words stay there


async def test_remapped_keys_are_the_ones_the_pane_names(tmp_path: Path, loom_home: Path) -> None:
    (loom_home / "config.yaml").write_text(
        "workbench:\n  keymap: {workbench.variants: ctrl+b, workbench.model: ctrl+y}\n")
    pipeline = copy_sample(tmp_path)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sample(app, pilot, pipeline)
        screen.query_one(PromptEditor).load_text("Nothing recorded answers {{ input.text }}")
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.prompt_text == screen.text and not output.busy,
                       what="the edit's sample")
        shown = status_text(screen)
        assert "(^b loads one)" in shown and "press ^y" in shown, shown
        await pilot.press("ctrl+y")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelSwitcherScreen),
                       what="the switcher")


async def test_m_previews_a_local_server_for_the_session_only(tmp_path: Path, llm_server) -> None:
    pipeline = copy_sample(tmp_path)
    yaml_before = pipeline.read_text()
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sample(app, pilot, pipeline)
        top = " ".join(text_of(screen.query_one("TopBar"), 200).split())
        assert "customer_sentiment › replay/gpt-4o-mini" in top
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelSwitcherScreen),
                       what="the switcher")
        switcher = app.screen
        assert switcher.query_one("#switcher-model", Input).disabled  # replay: its own model
        switcher.query_one("#switcher-provider", Select).value = "openai_compatible"
        await wait_for(pilot, lambda: switcher.key is not None
                       and switcher.query_one("#switcher-url-row").display, what="the URL row")
        assert "none needed" in text_of(switcher.query_one("#switcher-key"), 100)
        switcher.query_one("#switcher-url", Input).value = llm_server.base_url
        model = switcher.query_one("#switcher-model", Input)
        model.value = "local-model"
        model.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen
                       and screen.preview_model is not None, what="the preview model")
        await wait_for(pilot, lambda: "openai_compatible/local-model (preview)" in
                       text_of(screen.query_one("TopBar"), 200), what="the top bar")
        # Any edit answers now: the local server replies as the prompt tells it.
        screen.query_one(PromptEditor).load_text(screen.text + REPLY)
        output = screen.query_one(SampleOutput)
        await wait_for(pilot, lambda: output.prompt_text == screen.text and not output.busy
                       and output.results
                       and output.results[0].output is not None
                       and output.results[0].output.get("summary")
                       == "Answered by the local server.", what="the server's answers")
        assert all(verdicts(screen).values())
        assert {call.provider for r in output.results for call in r.calls} == \
            {"openai_compatible"}
        # F5 runs the pipeline as its file says, and says so.
        await pilot.press("f5")
        await wait_for(pilot, lambda: any("A run uses the pipeline's own replay · gpt-4o-mini"
                                          in n.message for n in app._notifications),
                       what="the warning")
    assert pipeline.read_text() == yaml_before


async def test_the_switcher_says_whether_the_key_is_there(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = copy_sample(tmp_path)
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await open_sample(app, pilot, pipeline)
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelSwitcherScreen),
                       what="the switcher")
        switcher = app.screen
        key_line = switcher.query_one("#switcher-key")
        switcher.query_one("#switcher-provider", Select).value = "openai"
        await wait_for(pilot, lambda: switcher.key is not None
                       and switcher.key.name == "OPENAI_API_KEY", what="the key")
        assert "✗ OPENAI_API_KEY is not set: f6 stores it in the keyring" in \
            " ".join(text_of(key_line, 200).split())
        assert switcher.query_one("#switcher-model", Input).value == "gpt-4o-mini"
        options = switcher.query_one("#switcher-models")
        assert options.option_count > 5  # the models Loom's data knows for openai
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        switcher.query_one("#switcher-provider", Select).value = "anthropic"
        await wait_for(pilot, lambda: switcher.key is not None
                       and switcher.key.name == "ANTHROPIC_API_KEY", what="the key")
        assert "✓ ANTHROPIC_API_KEY found in the environment" in text_of(key_line, 200)
        assert switcher.query_one("#switcher-model", Input).value == "claude-haiku-4-5"
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, WorkbenchScreen), what="closed")
        assert app.screen.preview_model is None  # cancelled: nothing changed


async def test_a_variants_name_and_description_are_text_not_markup(tmp_path: Path) -> None:
    pipeline = copy_sample(tmp_path)
    variants = pipeline.parent / "prompts" / "variants"
    (variants / "[bold]loud[_b].j2").write_text(
        "{#- variant: [red]not red[/] and [link=x]no link -#}\n{{ input.text }}")
    app = LoomApp(tmp_path, debounce_s=0.05)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_sample(app, pilot, pipeline)
        await wait_for(pilot, lambda: len(screen.variants) == 4, what="the variants")
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, VariantsScreen), what="variants")
        listed = app.screen.query_one("#variants-list")
        shown = [str(listed.get_option_at_index(i).prompt) for i in range(listed.option_count)]
        assert any("[bold]loud[ b]" in s and "[red]not red[/] and [link=x]no link" in s
                   for s in shown), shown
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), what="palette")
        await pilot.press(*"loud")
        commands = app.screen.query_one(CommandList)
        await wait_for(pilot, lambda: commands.option_count > 0, what="hits")
        prompts = [str(commands.get_option_at_index(i).prompt)
                   for i in range(commands.option_count)]
        assert any("[bold]loud[ b]" in p and "[red]not red[/]" in p for p in prompts), prompts
