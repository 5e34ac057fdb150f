"""The workbench for one pipeline: Records | Prompt (editor, rendered) | Output.

Typing in the prompt re-renders it for the picked record at once and, once you pause, runs the
sample (the picked record first) through the transform and every evaluator — in a worker, with
cached answers returned at once. ctrl+s saves the prompt as a new version and shows which
sample records changed verdict against the previous one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.timer import Timer


from core.api import LoadedSpec, PreviewModel, PromptComparison, PromptVariant, RenderResult
from core.records import Record
from loom_tui import format as fmt
from loom_tui.screens import section_key
from loom_tui.messages import (PageWanted, PipelineOpened, PreviewModelLoaded, PromptEdited,
                               PromptRendered, PromptSaved, RecordsFetched, SampleEvaluated,
                               SampleFailed, SampleRequested, VariantsListed, VerdictsCompared)
from loom_tui.screens.base import LoomScreen, PaletteCommand
from loom_tui.widgets.paged_table import Column, PagedTable, Row
from loom_tui.widgets.prompt_editor import PromptEditor
from loom_tui.widgets.rendered_prompt import RenderedPrompt
from loom_tui.widgets.sample_output import SampleOutput
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.top_bar import TopBar

RECORD_COLUMNS = (Column("id", 8), Column("record", None))
RENDER_DELAY_S = 0.12
SAMPLE_SIZES = (1, 3, 5, 10, 20)


class WorkbenchScreen(LoomScreen):
    SECTION = "pipelines"
    TITLE = "Workbench"
    HELP = ("Records the source yields (paged) on the left; the prompt file in the middle with "
            "the prompt rendered for the picked record below it; on the right the output and "
            "every evaluator's score for a sample of records, the picked one first. The output "
            "refreshes by itself shortly after you stop typing, and on ctrl+r. ctrl+s saves the "
            "prompt and shows which sample records changed verdict against the previous version. "
            "Before you save, an edit is judged against the saved prompt on the same records: d "
            "shows both side by side. v loads a prompt variant kept beside the prompt (unsaved); "
            "m previews with another provider or model for this session (the pipeline file keeps "
            "its own; F6 stores a key). F8 projects what a whole run would cost and take, from "
            "20 records.")
    BINDINGS = [
        Binding("escape,q", "back", "Back", tooltip="Back to the pipelines (asks first with "
                "unsaved edits)", id="workbench.back"),
        Binding("enter", "inspect", "Inspect", tooltip="The picked record whole: fields, "
                "rendered prompt, raw answer, output, every score", id="workbench.inspect"),
        Binding("i", "edit", "Edit prompt", tooltip="Go to the prompt and type (escape stops)",
                id="workbench.edit"),
        Binding("v", "variants", "Variants", tooltip="Load a prompt variant into the editor "
                "as an unsaved edit", id="workbench.variants"),
        Binding("m", "switch_model", "Model", tooltip="Preview with another provider or model "
                "(this session only; the pipeline file is not changed)", id="workbench.model"),
        Binding("d", "diff", "A/B per record", tooltip="The sample record by record: outputs "
                "and verdicts under the saved prompt and your edit (or, after a save, the "
                "previous version)", id="workbench.diff"),
        Binding("ctrl+s", "save", "Save", tooltip="Write the prompt file, store the version, "
                "and compare verdicts with the previous one", id="workbench.save"),
        Binding("ctrl+r", "refresh", "Refresh", tooltip="Run the sample again now",
                id="workbench.refresh"),
        Binding("f5", "run", "Run", tooltip="Run the whole pipeline (shows the estimate first "
                "when it is big; asks which prompt with unsaved edits)", id="workbench.run"),
        # Not ctrl+e: the editor's end of line, pressed by habit, must not start paid calls.
        Binding("f8", "estimate", "Estimate", tooltip="Project the whole run's cost, tokens "
                "and time from 20 records (saved prompt)", id="workbench.estimate"),
        Binding("plus,equals_sign", "sample_size(1)", "Sample +", tooltip="More sample records",
                id="workbench.sample_more"),
        Binding("minus", "sample_size(-1)", "Sample −", tooltip="Fewer sample records",
                id="workbench.sample_less"),
    ]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.loaded: LoadedSpec | None = None
        self.saved_text: str | None = None  # the prompt file as it is on disk
        self.text: str | None = None  # the editor's buffer
        self.prompt_path = ""
        self.picked: Record | None = None
        self.sample_size = 5
        self._debounce: dict[str, Timer] = {}
        self._ab_pending = False
        self._run_after_save = False  # F5's "save and run": the run starts once saved
        self.comparison: PromptComparison | None = None  # the last save's A/B, while it holds
        self.comparison_unsaved = False  # the A/B is the edit against the saved prompt
        self.pipeline: LoadedSpec | None = None  # as the file says: what runs and estimates use
        self.preview_model: PreviewModel | None = None  # this session's override, if any
        self.variants: list[PromptVariant] = []

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield TopBar()
        with Horizontal(id="workbench"):
            with Vertical(id="records-pane", classes="pane") as records:
                records.border_title = "Records"
                yield PagedTable(RECORD_COLUMNS, page_size=50, window_size=200, margin=10,
                                 id="records-table", empty="the source yielded no records")
            with Vertical(id="prompt-column"):
                with Vertical(id="prompt-pane", classes="pane") as prompt:
                    prompt.border_title = "Prompt"
                    yield PromptEditor(id="prompt-editor")
                with Vertical(id="rendered-pane", classes="pane") as rendered:
                    rendered.border_title = "Rendered"
                    yield RenderedPrompt(id="rendered")
            with Vertical(id="output-pane", classes="pane") as output:
                output.border_title = "Output"
                yield SampleOutput(id="output")
        yield LoomFooter()

    def crumbs(self) -> list[str]:
        name = self.loaded.spec.name if self.loaded is not None else self.path.parent.name
        if self.loaded is None:
            return [name]
        transform = self.loaded.spec.transform
        model = f"{transform.provider}/{transform.model}"
        # A session's override is marked: a run still uses the pipeline's own.
        return [name, f"{model} (preview)" if self.preview_model is not None else model]

    def on_mount(self) -> None:
        super().on_mount()
        self.sample_size = self.loom.sample_size
        self._title_output()
        self.open_pipeline()

    # ------------------------------------------------------------------ opening

    @work(thread=True, exclusive=True, group="open", exit_on_error=False)
    def open_pipeline(self) -> None:
        loaded = self.workspace.load(self.path)
        source = self.workspace.prompt_source(loaded)
        self.post_message(PipelineOpened(loaded, source.text, _relative(source.path, loaded)))
        self.post_message(VariantsListed(self.workspace.prompt_variants(loaded)))

    @on(VariantsListed)
    def _variants_listed(self, event: VariantsListed) -> None:
        self.variants = event.variants

    @on(PipelineOpened)
    def _opened(self, event: PipelineOpened) -> None:
        self.loaded = event.loaded
        self.pipeline = event.loaded
        self.saved_text = event.prompt_text
        self.prompt_path = event.prompt_path
        self.refresh_top_bar()
        editor = self.query_one(PromptEditor)
        editor.load_text(event.prompt_text)
        self._title_prompt()
        table = self.query_one("#records-table", PagedTable)
        table.reset()
        # Records first: keys act on the screen until you choose to type (Enter or i).
        table.focus()

    # ------------------------------------------------------------------ records

    @on(PageWanted, "#records-table")
    def _records_wanted(self, event: PageWanted) -> None:
        if self.loaded is None:
            return
        table = self.query_one("#records-table", PagedTable)
        if event.direction == "first":
            self.fetch_records(0, table.page_size, "first", event.generation)
        elif event.direction in ("after", "last"):
            anchor: Record | None = event.anchor or (table.rows[-1].item if table.rows else None)
            start = anchor.ordinal + 1 if anchor is not None else 0
            self.fetch_records(start, table.page_size, "after", event.generation)
        elif event.direction == "before" and event.anchor is not None:
            end = event.anchor.ordinal
            start = max(0, end - table.page_size)
            self.fetch_records(start, end - start, "before", event.generation)

    @work(exclusive=False, group="records", exit_on_error=False)
    async def fetch_records(self, offset: int, limit: int, direction: str, generation: int) -> None:
        assert self.loaded is not None
        records = await self.workspace.preview(self.loaded, limit=limit, offset=offset)
        self.post_message(RecordsFetched(records, direction, generation))

    @on(RecordsFetched)
    def _records_fetched(self, event: RecordsFetched) -> None:
        table = self.query_one("#records-table", PagedTable)
        rows = [Row(record.ordinal, (record.id, fmt.record_summary(record.data, record.id)), record)
                for record in event.records]
        if event.direction == "first" and rows:
            # Ids are often short (R001): give the rest of the pane to the record itself.
            table.fit_column(0, max(2, min(16, max(len(r.id) for r in event.records))))
        table.show_page(rows, event.direction, event.generation)  # type: ignore[arg-type]
        self.query_one("#records-pane").border_subtitle = table.position
        if not table.rows:
            self.query_one(RenderedPrompt).show_note("The source yielded no records.")
            self.query_one(SampleOutput).show_note("No records to run the prompt on.")

    @on(PagedTable.Highlighted, "#records-table")
    def _record_picked(self, event: PagedTable.Highlighted) -> None:
        self.query_one("#records-pane").border_subtitle = event.table.position
        record = event.row.item if event.row is not None else None
        if record is None or (self.picked is not None and record.ordinal == self.picked.ordinal):
            return
        self.picked = record
        self.query_one("#rendered-pane").border_title = f"Rendered for {escape(record.id)}"
        self._schedule("render", RENDER_DELAY_S / 2)
        self._schedule("sample", min(0.3, self.loom.debounce_s))

    # ------------------------------------------------------------------ typing

    @on(PromptEdited)
    def _edited(self, event: PromptEdited) -> None:
        changed = event.text != self.text
        self.text = event.text
        self._title_prompt()
        if changed:
            self._ab_pending = False
            self.comparison = None
            self.refresh_bindings()
            self._schedule("render", RENDER_DELAY_S)
            self._schedule("sample", self.loom.debounce_s)

    def _schedule(self, what: str, delay: float) -> None:
        """Debounce: a new request restarts the wait."""
        timer = self._debounce.pop(what, None)
        if timer is not None:
            timer.stop()
        callback = self.render_prompt if what == "render" else \
            (lambda: self.post_message(SampleRequested()))
        self._debounce[what] = self.set_timer(delay, callback)

    def render_prompt(self) -> None:
        if self.loaded is not None and self.picked is not None and self.text is not None:
            self.render_for(self.loaded, self.picked, self.text)

    @work(thread=True, exclusive=True, group="render", exit_on_error=False)
    def render_for(self, loaded: LoadedSpec, record: Record, text: str) -> None:
        self.post_message(PromptRendered(record.id, self.workspace.render(loaded, record, text)))

    @on(PromptRendered)
    def _rendered(self, event: PromptRendered) -> None:
        self.query_one(RenderedPrompt).show(event.record_id, event.result)
        self._title_prompt(event.result)

    # ------------------------------------------------------------------ the sample

    def sample_records(self) -> list[Record]:
        """The picked record first, then the records after it in the window (then before)."""
        table = self.query_one("#records-table", PagedTable)
        records = [row.item for row in table.rows]
        if self.picked is None:
            return records[: self.sample_size]
        index = next((i for i, r in enumerate(records) if r.ordinal == self.picked.ordinal), 0)
        ordered = [*records[index:], *reversed(records[:index])]
        return ordered[: self.sample_size]

    @on(SampleRequested)
    def _sample_requested(self) -> None:
        if self.loaded is None or self.text is None:
            return
        records = self.sample_records()
        if not records:
            return
        self.query_one(SampleOutput).show_busy(len(records))
        self.run_sample(self.loaded, records, self.text, self.saved_text)

    @work(exclusive=True, group="sample", exit_on_error=False)
    async def run_sample(self, loaded: LoadedSpec, records: list[Record], text: str,
                         saved: str | None = None) -> None:
        if saved is not None and saved != text:
            # An edit is judged against the saved prompt on the same records: the saved
            # prompt's answers are cached (or replayed), so this costs the edit's calls only.
            comparison = await self.workspace.compare_prompts(loaded, records, saved, text)
            self.post_message(SampleEvaluated(comparison.after_results, text, comparison))
            return
        results = await self.workspace.run_sample(loaded, records, prompt_text=text)
        self.post_message(SampleEvaluated(results, text))

    @on(SampleEvaluated)
    def _sample_done(self, event: SampleEvaluated) -> None:
        if event.prompt_text != self.text or self._ab_pending:
            return  # typing went on (the next sample is on its way), or a save's A/B is
        if event.comparison is not None:
            self.comparison, self.comparison_unsaved = event.comparison, True
            self.refresh_bindings()  # d: the edit against the saved prompt
        # A comparison stays on screen until the prompt changes again.
        output = self.query_one(SampleOutput)
        output.prompt_text = event.prompt_text
        output.miss_hint = self._miss_hint()
        output.show_results(event.results, self.comparison, unsaved=self.comparison_unsaved)
        self._title_output()

    @on(SampleFailed)
    def _sample_failed(self, event: SampleFailed) -> None:
        error = event.error
        if self.preview_model is not None:
            # The session's model could not answer (no key, no server): say how to change it.
            error += (f" · {self._secrets_key()} stores a key in the keyring; "
                      f"{self._key('workbench.model')} switches the model")
        self.query_one(SampleOutput).show_note(error, error=True)

    def work_failed(self, group: str, message: str) -> None:
        if group == "sample":
            self.post_message(SampleFailed(message))
            return
        if group == "open":
            self.query_one(RenderedPrompt).show_note(message)
            self.query_one(SampleOutput).show_note(message, error=True)
        if group == "records":
            table = self.query_one("#records-table", PagedTable)
            for direction in ("first", "after", "before"):
                table.page_failed(direction, table.generation)  # type: ignore[arg-type]
            self.query_one(SampleOutput).show_note(message, error=True)
        if group == "save":
            self._ab_pending = False
            self._run_after_save = False
        super().work_failed(group, message)

    # ------------------------------------------------------------------ saving: the A/B

    def action_save(self) -> None:
        if self.loaded is None:
            return
        # The editor's text itself: a keystroke's PromptEdited may still be queued.
        self.text = self.query_one(PromptEditor).text
        self._ab_pending = True
        self.query_one(SampleOutput).show_busy(len(self.sample_records()))
        self.save(self.loaded, self.text, self.sample_records())

    @work(exclusive=True, group="save", exit_on_error=False)
    async def save(self, loaded: LoadedSpec, text: str, records: list[Record]) -> None:
        saved = await self.workspace.save_prompt(loaded, text)
        self.post_message(PromptSaved(saved))
        if records and saved.changed:
            self.post_message(VerdictsCompared(await self.workspace.compare_prompts(
                loaded, records, saved.previous_text, text)))

    @on(PromptSaved)
    def _saved(self, event: PromptSaved) -> None:
        saved = event.saved
        self.saved_text = saved.text
        self._title_prompt()
        if not saved.changed:
            # Nothing new to compare against: the output stays as it was.
            self._ab_pending = False
            output = self.query_one(SampleOutput)
            if output.results:
                output.show_results(output.results, self.comparison,
                                    unsaved=self.comparison_unsaved)
        what = (f"saved {self.prompt_path} as version {fmt.short_hash(saved.hash)}"
                if saved.changed else f"{self.prompt_path} unchanged")
        self.notify(markup=False, message=what, title="prompt", timeout=4)
        if self._run_after_save and self.pipeline is not None:
            self._run_after_save = False
            self.loom.confirm_run(self.path, self.pipeline)

    @on(VerdictsCompared)
    def _compared(self, event: VerdictsCompared) -> None:
        comparison = event.comparison
        self._ab_pending = False
        if self.text is not None and _hash_matches(self.text, comparison.after_hash):
            self.comparison, self.comparison_unsaved = comparison, False
            self.refresh_bindings()  # d: the A/B per record
            output = self.query_one(SampleOutput)
            output.prompt_text = self.text
            output.miss_hint = self._miss_hint()
            output.show_results(comparison.after_results, comparison)
        else:
            self.query_one(SampleOutput).remove_class("-busy")

    # ------------------------------------------------------------------ other actions

    def action_refresh(self) -> None:
        self._schedule("render", 0)
        self.post_message(SampleRequested())

    def action_sample_size(self, step: int) -> None:
        sizes = SAMPLE_SIZES
        current = min(range(len(sizes)), key=lambda i: abs(sizes[i] - self.sample_size))
        self.set_sample_size(sizes[max(0, min(len(sizes) - 1, current + step))])

    def set_sample_size(self, size: int) -> None:
        if size != self.sample_size:
            self.sample_size = size
            self._title_output()
            self._schedule("sample", min(0.3, self.loom.debounce_s))

    def _say_run_uses_own_model(self) -> None:
        if self.preview_model is not None and self.pipeline is not None:
            own = self.pipeline.spec.transform
            self.notify(f"A run uses the pipeline's own {own.provider} · {own.model}: "
                        f"{self.preview_model.label} is this session's preview only (set it "
                        f"in {self.path.name} to run with it).", severity="warning", timeout=8)

    def action_run(self) -> None:
        if self.loaded is None or self.pipeline is None:
            return
        self._say_run_uses_own_model()
        if not self.dirty:
            self.loom.confirm_run(self.path, self.pipeline)
            return
        from loom_tui.screens.confirm import ChoiceScreen

        def chosen(answer: str | None) -> None:
            if answer == "save":
                self._run_after_save = True
                self.action_save()
            elif answer == "saved":
                self.loom.confirm_run(self.path, self.pipeline)

        self.app.push_screen(ChoiceScreen(
            "Unsaved prompt", f"{self.prompt_path} has unsaved changes. A run reads the prompt "
            "file: save your edits and run them, or run the saved prompt?",
            [("save", "Save and run"), ("saved", "Run saved prompt")]), chosen)

    def action_estimate(self) -> None:
        if self.loaded is None or self.pipeline is None:
            return
        if self.text is not None and self.text != self.saved_text:
            self.notify("The estimate uses the saved prompt: ctrl+s saves your edits first.",
                        severity="warning")
        self._say_run_uses_own_model()
        self.loom.estimate(self.path, self.pipeline)

    @property
    def dirty(self) -> bool:
        return self.text is not None and self.saved_text is not None and \
            self.text != self.saved_text

    def losses(self) -> list[str]:
        return [f"{self.prompt_path} has unsaved changes"] if self.dirty else []

    @property
    def editing(self) -> bool:
        return self.query_one(PromptEditor).editing

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # While typing, only the keys that are not text are shown (the rest type).
        if action in ("sample_size", "edit", "back", "inspect", "variants", "switch_model"):
            return not self.editing
        if action == "diff":
            return self.comparison is not None and not self.editing
        return True

    @on(PromptEditor.EditingChanged)
    def _editing_changed(self, event: PromptEditor.EditingChanged) -> None:
        pane = self.query_one("#prompt-pane")
        pane.set_class(event.editing, "-editing")
        self._title_prompt()
        self.refresh_bindings()

    @on(PagedTable.Activated, "#records-table")
    def action_inspect(self) -> None:
        if self.loaded is None or self.picked is None or self.text is None:
            return
        from loom_tui.screens.inspect import RecordInspector

        self.app.push_screen(RecordInspector(self.loaded, self.text, self.picked,
                                             self._known_result(self.picked), self._step))

    def _known_result(self, record: Record) -> Any:
        output = self.query_one(SampleOutput)
        if output.prompt_text != self.text:
            return None
        return next((r for r in output.results if r.record.ordinal == record.ordinal), None)

    def _step(self, record: Record, delta: int) -> tuple[Record, Any] | None:
        """The inspector's n / p: the record beside this one in the list, picked here too."""
        table = self.query_one("#records-table", PagedTable)
        ordinals = [row.item.ordinal for row in table.rows]
        if record.ordinal not in ordinals:
            return None
        index = ordinals.index(record.ordinal) + delta
        if not 0 <= index < len(table.rows):
            return None
        table.cursor = index
        there = table.rows[index].item
        return there, self._known_result(there)

    def action_diff(self) -> None:
        if self.comparison is None or self.loaded is None:
            return
        from loom_tui.screens.record_diff import RecordDiffScreen

        labels = ("saved", "your edit") if self.comparison_unsaved else ("before", "saved now")
        self.app.push_screen(RecordDiffScreen(self.comparison, self.loaded.spec.name,
                                              labels=labels))

    def action_edit(self) -> None:
        self.query_one(PromptEditor).action_start_editing()

    def action_back(self) -> None:
        if self.dirty:
            from loom_tui.screens.confirm import ConfirmScreen

            def leave(answer: tuple[bool, str | None] | None) -> None:
                if answer and answer[0]:
                    self.dismiss()

            self.app.push_screen(ConfirmScreen(
                "Unsaved prompt", f"{self.prompt_path} has unsaved changes. Leave without saving?",
                yes="Leave", danger=True), leave)
            return
        self.dismiss()

    # ------------------------------------------------------------------ variants (v)

    def action_variants(self) -> None:
        if self.loaded is None:
            return
        from loom_tui.screens.variants import VariantsScreen

        self.app.push_screen(VariantsScreen(self.variants, self.prompt_path,
                                            current=self.text), self.load_variant)

    def load_variant(self, chosen: PromptVariant | str | None) -> None:
        """Put a variant (or, for "@saved", the saved prompt) in the editor, unsaved: the
        editor posts PromptEdited like any typing, and the sample follows."""
        from loom_tui.screens.variants import SAVED

        if chosen is None or self.saved_text is None:
            return
        text = self.saved_text if chosen == SAVED else getattr(chosen, "text", None)
        if text is None or text == self.text:
            return
        self.query_one(PromptEditor).load_text(text)
        what = "the saved prompt" if chosen == SAVED else \
            f"variant {getattr(chosen, 'title', '')} (unsaved: ctrl+s saves it)"
        self.notify(f"loaded {what}", title="prompt", timeout=4)

    # ------------------------------------------------------------------ the preview model (m)

    def action_switch_model(self) -> None:
        if self.pipeline is None:
            return
        from loom_tui.screens.model_switcher import ModelSwitcherScreen

        self.app.push_screen(ModelSwitcherScreen(
            self.pipeline, self.workspace.preview_providers(self.pipeline), self.preview_model),
            self.switch_model)

    def switch_model(self, chosen: PreviewModel | str | None) -> None:
        from loom_tui.screens.model_switcher import PIPELINE

        if chosen is None:
            return
        model = None if chosen == PIPELINE else chosen
        if model == self.preview_model:
            return
        self.load_preview(model)  # type: ignore[arg-type]

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def load_preview(self, model: PreviewModel | None) -> None:
        self.post_message(PreviewModelLoaded(self.workspace.load_for_preview(self.path, model),
                                             model))

    @on(PreviewModelLoaded)
    def _preview_loaded(self, event: PreviewModelLoaded) -> None:
        self.loaded, self.preview_model = event.loaded, event.model
        # Answers from another model compare with nothing on screen: the sample runs again.
        self.comparison, self.comparison_unsaved, self._ab_pending = None, False, False
        self.refresh_bindings()
        self.refresh_top_bar()
        transform = event.loaded.spec.transform
        self.notify(f"previewing with {transform.provider} · {transform.model}"
                    + (" (this session only)" if event.model is not None else
                       " (the pipeline's own)"), title="model", timeout=4)
        self._schedule("sample", 0.01)

    def _miss_hint(self) -> Text:
        """What would answer a prompt the cassette has no answer for: the words the output
        pane shows (the engine's error is typed, CassetteMiss; these are the workbench's)."""
        cassette = self.loaded.spec.transform.cassette if self.loaded is not None else None
        variants = fmt.plural(len(self.variants), "variant")
        keys = {name: self._key("workbench." + name) for name in ("variants", "model")}
        secrets = self._secrets_key()
        text = Text()
        text.append("No recorded answer for this prompt. ",
                    f"bold {self.app.theme_variables.get('warning', '')}")
        text.append(f"The recorded answers in {Path(cassette or 'the cassette').name} cover the "
                    f"shipped prompt")
        if self.variants:
            text.append(f" and its {variants} ({keys['variants']} loads one)")
        text.append(f". To answer any edit, choose a model with a key ({secrets} stores it) or "
                    f"a local server: press {keys['model']}.")
        return text

    def _secrets_key(self) -> str:
        return section_key(self, "secrets")

    def _key(self, binding_id: str) -> str:
        """The key a binding has now: the active bindings carry `workbench.keymap`'s remaps."""
        for active in self.active_bindings.values():
            if active.binding.id == binding_id:
                return self.app.get_key_display(active.binding)
        for _key, binding in self._bindings:
            if binding.id == binding_id:
                return self.app.get_key_display(binding)
        return "?"

    def extra_commands(self) -> Iterator[PaletteCommand]:
        for variant in self.variants:
            yield PaletteCommand(f"Load prompt variant: {variant.title}",
                                 variant.description or str(variant.path.name),
                                 lambda variant=variant: self.load_variant(variant))
        if self.saved_text is not None and self.dirty:
            from loom_tui.screens.variants import SAVED

            yield PaletteCommand("Load the saved prompt", f"{self.prompt_path} as it is on "
                                 "disk (drops the edit)", lambda: self.load_variant(SAVED))
        if self.preview_model is not None:
            yield PaletteCommand("Preview with the pipeline's own model",
                                 "Back to the provider and model the pipeline file names",
                                 lambda: self.switch_model("@pipeline"))
        for size in SAMPLE_SIZES:
            yield PaletteCommand(f"Sample size: {size}", f"Judge {fmt.plural(size, 'record')}",
                                 lambda size=size: self.set_sample_size(size))

    def restyle(self) -> None:
        super().restyle()
        output = self.query_one(SampleOutput)
        if output.results and not output.busy:
            output.miss_hint = self._miss_hint()
            output.show_results(output.results, output.comparison, unsaved=output.unsaved)
        rendered = self.query_one(RenderedPrompt)
        if rendered.result is not None and self.picked is not None:
            rendered.show(self.picked.id, rendered.result)
        self._title_prompt(rendered.result)

    # ------------------------------------------------------------------ titles

    def _title_prompt(self, rendered: RenderResult | None = None) -> None:
        pane = self.query_one("#prompt-pane")
        pane.border_title = f"Prompt · {escape(self.prompt_path)}" if self.prompt_path else "Prompt"
        colors = self.app.theme_variables
        if rendered is not None and rendered.messages is None:
            line = f"line {rendered.error_line}" if rendered.error_line else "template"
            pane.border_subtitle = f"[{colors.get('error', 'red')}]✗ error on {line}[/]"
        elif self.text is not None and self.saved_text is not None and self.text != self.saved_text:
            pane.border_subtitle = f"[{colors.get('warning', 'yellow')}]● unsaved · ctrl+s[/]"
        else:
            pane.border_subtitle = "saved"
        if self.query_one(PromptEditor).editing:
            pane.border_subtitle = f"editing · esc stops · {pane.border_subtitle}"

    def _title_output(self) -> None:
        pane = self.query_one("#output-pane")
        pane.border_title = f"Output · sample of {self.sample_size}"
        pane.border_subtitle = "+/− size · ctrl+r refresh"


def _relative(path: Path, loaded: LoadedSpec) -> str:
    try:
        return str(Path(path).relative_to(loaded.base_dir))
    except ValueError:
        return str(path)


def _hash_matches(text: str, content_hash: str) -> bool:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest() == content_hash

