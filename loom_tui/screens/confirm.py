"""Questions before something is lost: yes/no with an optional note (discarding records is
for good), and a choice among a few answers (save and run / run the saved prompt / cancel).

The safe answer has the focus in every one: Enter, pressed by habit, never loses anything."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class ConfirmScreen(ModalScreen[tuple[bool, str | None]]):
    """Dismisses with (confirmed, note)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="confirm.cancel")]

    def __init__(self, title: str, question: str, *, yes: str = "Yes", no: str = "Cancel",
                 note: bool = False, danger: bool = False) -> None:
        super().__init__()
        self.no = no
        self.title_text = title
        self.question = question
        self.yes = yes
        self.with_note = note
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-body") as body:
            body.border_title = self.title_text
            yield Static(Text(self.question), id="confirm-question")
            if self.with_note:
                yield Input(placeholder="note (optional), kept with the action", id="confirm-note")
            with Horizontal(id="confirm-buttons"):
                yield Button(self.yes, variant="error" if self.danger else "primary", id="confirm-yes")
                yield Button(self.no, id="confirm-no")

    def on_mount(self) -> None:
        if self.app.is_headless:
            for widget in self.query(Input):
                widget.cursor_blink = False
        self.query_one("#confirm-no", Button).focus()

    def _note(self) -> str | None:
        if not self.with_note:
            return None
        return self.query_one("#confirm-note", Input).value.strip() or None

    @on(Button.Pressed, "#confirm-yes")
    @on(Input.Submitted, "#confirm-note")
    def _yes(self) -> None:
        self.dismiss((True, self._note()))

    @on(Button.Pressed, "#confirm-no")
    def action_cancel(self) -> None:
        self.dismiss((False, None))


class ChoiceScreen(ModalScreen[str | None]):
    """Dismisses with the chosen answer's key, or None for Cancel (focused, and escape)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="choice.cancel")]

    def __init__(self, title: str, question: str, choices: list[tuple[str, str]], *,
                 danger: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.title_text = title
        self.question = question
        self.choices = choices  # (key, button label), in the order shown
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-body", classes="-choice") as body:
            body.border_title = self.title_text
            yield Static(Text(self.question), id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                for key, label in self.choices:
                    yield Button(label, variant="error" if key in self.danger else "primary",
                                 id=f"choice-{key}", name=key)
                yield Button("Cancel", id="choice-cancel")

    def on_mount(self) -> None:
        self.query_one("#choice-cancel", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "choice-cancel" else event.button.name)

    def action_cancel(self) -> None:
        self.dismiss(None)
