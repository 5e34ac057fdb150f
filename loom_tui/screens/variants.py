"""Prompt variants (v in the workbench): the saved prompt and the texts kept beside it in
`variants/` (core.variants), to load into the editor as an unsaved edit. Nothing is written:
ctrl+s in the workbench saves a loaded variant like any edit, and "the saved prompt" here takes
the editor back to the file."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from core.api import PromptVariant

SAVED = "@saved"  # the option that stands for the prompt file as it is on disk


class VariantsScreen(ModalScreen[PromptVariant | str | None]):
    """Dismisses with the chosen variant, SAVED for the saved prompt, or None (escape)."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="variants.cancel"),
    ]

    def __init__(self, variants: Sequence[PromptVariant], prompt_path: str, *,
                 current: str | None = None) -> None:
        super().__init__()
        self.variants = list(variants)
        self.prompt_path = prompt_path
        self.current = current  # the editor's text: the option holding it is marked

    def compose(self) -> ComposeResult:
        with Vertical(id="variants-body") as body:
            body.border_title = "Prompt variants"
            body.border_subtitle = "enter loads · escape closes"
            yield Static(Text(
                "Load one into the editor as an unsaved edit: the sample runs it at once. "
                "ctrl+s would save it over the prompt file.", style="dim"), id="variants-intro")
            yield OptionList(*self._options(), id="variants-list")

    def _options(self) -> list[Option]:
        options = [Option(Text.assemble(("The saved prompt", "bold"), "\n",
                                        (f"{self.prompt_path}, as it is on disk", "dim")),
                          id=SAVED)]
        if not self.variants:
            options.append(Option(Text(f"no variants: put .j2 files in a variants/ folder "
                                       f"beside {self.prompt_path}", style="dim"),
                                  id="@none", disabled=True))
        for variant in self.variants:
            here = "  ● in the editor" if variant.text == self.current else ""
            label = Text.assemble((variant.title, "bold"), (here, "italic"), "\n",
                                  (variant.description or variant.path.name, "dim"))
            options.append(Option(label, id=variant.name))
        return options

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected, "#variants-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self._choose(event.option.id)

    def _choose(self, option_id: str | None) -> None:
        if option_id == SAVED:
            self.dismiss(SAVED)
            return
        chosen = next((v for v in self.variants if v.name == option_id), None)
        if chosen is not None:
            self.dismiss(chosen)

    def action_cancel(self) -> None:
        self.dismiss(None)

