"""Preview with another model (m in the workbench): a provider, a model and, for a local
OpenAI-compatible server (llama.cpp, Ollama, LiteLLM), its base URL — for this session's sample
only. The choice becomes `--set transform.provider=… transform.model=…` overrides through
core.api; the pipeline file is never written. Whether the provider's key can be found is
checked by name as the provider changes (keyring, then environment), with F6 to store it."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Select, Static
from textual.widgets.option_list import Option

from core.api import LOCAL_BASE_URL, KeyStatus, LoadedSpec, PreviewModel
from loom_tui.screens import section_key
from loom_tui.messages import KeyChecked

PIPELINE = "@pipeline"  # dismissed with this: back to the pipeline's own provider and model
SHOWN_MODELS = 40  # known models listed under the field (typing filters them)
KEY_LABEL = "key".ljust(10)  # in line with the fields' labels


class ModelSwitcherScreen(ModalScreen[PreviewModel | str | None]):
    """Dismisses with the PreviewModel to use, PIPELINE for the pipeline's own, or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="switcher.cancel"),
        Binding("ctrl+o", "use_pipeline", "Pipeline's own", tooltip="Back to the provider "
                "and model the pipeline file names", id="switcher.pipeline"),
    ]

    def __init__(self, pipeline: LoadedSpec, providers: list[str],
                 current: PreviewModel | None) -> None:
        super().__init__()
        self.pipeline = pipeline  # as the file says (no overrides)
        self.providers = providers
        transform = pipeline.spec.transform
        self.own = PreviewModel(transform.provider, transform.model, transform.base_url)
        self.current = current or self.own
        self.key: KeyStatus | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="switcher-body") as body:
            body.border_title = "Preview model"
            body.border_subtitle = "enter uses it · escape closes"
            yield Static(Text.assemble(
                "For this session's sample only: ", (self.pipeline.path.name, "bold"),
                f" keeps {self.own.label}."), id="switcher-intro")
            with Horizontal(classes="switcher-row"):
                yield Static("provider", classes="switcher-label")
                yield Select([(p, p) for p in self.providers], value=self.current.provider
                             if self.current.provider in self.providers else self.providers[0],
                             allow_blank=False, compact=True, id="switcher-provider")
            with Horizontal(classes="switcher-row"):
                yield Static("model", classes="switcher-label")
                yield Input(self.current.model, placeholder="model name", compact=True,
                            id="switcher-model")
            yield OptionList(id="switcher-models")
            with Horizontal(classes="switcher-row", id="switcher-url-row"):
                yield Static("base URL", classes="switcher-label")
                yield Input(self.current.base_url or LOCAL_BASE_URL, id="switcher-url",
                            placeholder=LOCAL_BASE_URL, compact=True)
            yield Static(id="switcher-key")
            with Horizontal(id="switcher-buttons"):
                yield Button("Use it", variant="primary", compact=True, id="switcher-use")
                yield Button("Pipeline's own", compact=True, id="switcher-own")
                yield Button("Cancel", compact=True, id="switcher-cancel")

    def on_mount(self) -> None:
        if self.app.is_headless:
            for field in self.query(Input):
                field.cursor_blink = False
        self._provider_changed(self.provider)
        # The field to change first: the provider while replay holds the model fixed.
        model = self.query_one("#switcher-model", Input)
        (self.query_one("#switcher-provider", Select) if model.disabled else model).focus()

    @property
    def provider(self) -> str:
        value = self.query_one("#switcher-provider", Select).value
        return str(value) if isinstance(value, str) else self.providers[0]

    # ------------------------------------------------------------------ the provider

    @on(Select.Changed, "#switcher-provider")
    def _select_changed(self) -> None:
        self._provider_changed(self.provider)
        model = self.query_one("#switcher-model", Input)
        if not model.disabled:
            model.focus()  # the next field, as a form goes

    def _provider_changed(self, provider: str) -> None:
        model = self.query_one("#switcher-model", Input)
        # The cassette answers the requests it recorded, and the model is part of each one.
        model.disabled = provider == "replay"
        if provider == "replay":
            model.value = self.own.model
        elif provider != self.current.provider and model.value in (self.own.model, ""):
            known = self.app.workspace.known_models(provider)  # type: ignore[attr-defined]
            if known and model.value not in known:
                model.value = _default_model(provider, known)
        self.query_one("#switcher-url-row").display = provider == "openai_compatible"
        self._list_models()
        self.query_one("#switcher-key", Static).update(Text("checking the key…", style="dim"))
        self.check_key(provider)

    @work(thread=True, exclusive=True, group="key", exit_on_error=False)
    def check_key(self, provider: str) -> None:
        workspace = self.app.workspace  # type: ignore[attr-defined]
        self.post_message(KeyChecked(provider, workspace.key_status(self.pipeline, provider)))

    @on(KeyChecked)
    def _key_checked(self, event: KeyChecked) -> None:
        if event.provider != self.provider:
            return
        self.key = event.status
        self.query_one("#switcher-key", Static).update(self._key_line(event.status))

    def _key_line(self, status: KeyStatus) -> Text:
        colors = self.app.theme_variables
        if status.name is None:
            return Text.assemble((KEY_LABEL, "dim"), ("✓ none needed", colors.get("success", "")),
                                 (f" · {status.note}" if status.note else "", "dim"))
        if status.found_in is not None:
            return Text.assemble((KEY_LABEL, "dim"), (f"✓ {status.name}",
                                                    f"bold {colors.get('success', '')}"),
                                 f" found in the {status.found_in}")
        f6 = section_key(self, "secrets")
        return Text.assemble((KEY_LABEL, "dim"), (f"✗ {status.name} is not set",
                                                f"bold {colors.get('warning', '')}"),
                             f": {f6} stores it in the keyring (or export it), then come back")

    # ------------------------------------------------------------------ the model

    @on(Input.Changed, "#switcher-model")
    def _model_typed(self) -> None:
        self._list_models()

    def _list_models(self) -> None:
        listing = self.query_one("#switcher-models", OptionList)
        provider = self.provider
        typed = self.query_one("#switcher-model", Input).value.strip().lower()
        known = self.app.workspace.known_models(provider)  # type: ignore[attr-defined]
        shown = [name for name in known if typed in name.lower()] if typed not in known else known
        listing.clear_options()
        if provider == "replay":
            listing.add_option(Option(Text("the cassette answers the model it was recorded "
                                           "with", style="dim"), disabled=True))
        elif provider == "openai_compatible":
            listing.add_option(Option(Text("a local server answers the model it loaded: type "
                                           "its name", style="dim"), disabled=True))
        elif not shown:
            listing.add_option(Option(Text("not in Loom's model data: used as typed",
                                           style="dim"), disabled=True))
        for name in shown[:SHOWN_MODELS]:
            listing.add_option(Option(Text(name), id=name))
        if typed in shown[:SHOWN_MODELS]:
            listing.highlighted = shown.index(typed)  # the model in the field, in its place

    @on(OptionList.OptionSelected, "#switcher-models")
    def _model_picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            field = self.query_one("#switcher-model", Input)
            field.value = event.option.id
            field.focus()

    # ------------------------------------------------------------------ answers

    def chosen(self) -> PreviewModel | None:
        provider = self.provider
        model = self.query_one("#switcher-model", Input).value.strip()
        if not model:
            return None
        base_url = self.query_one("#switcher-url", Input).value.strip() or LOCAL_BASE_URL \
            if provider == "openai_compatible" else None
        return PreviewModel(provider, model, base_url)

    @on(Input.Submitted)
    @on(Button.Pressed, "#switcher-use")
    def action_use(self) -> None:
        chosen = self.chosen()
        if chosen is None:
            self.notify("Type a model name first.", severity="warning", markup=False)
            return
        same = (chosen.provider, chosen.model) == (self.own.provider, self.own.model) and (
            chosen.provider != "openai_compatible" or chosen.base_url == self.own.base_url)
        self.dismiss(PIPELINE if same else chosen)

    @on(Button.Pressed, "#switcher-own")
    def action_use_pipeline(self) -> None:
        self.dismiss(PIPELINE)

    @on(Button.Pressed, "#switcher-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


def _default_model(provider: str, known: list[str]) -> str:
    """A small, cheap model of the vendor to start from (the field stays editable)."""
    for wanted in ("gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5"):
        if wanted in known:
            return wanted
    return known[0]

