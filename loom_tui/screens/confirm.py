"""A yes/no question with an optional note (discarding records is for good)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class ConfirmScreen(ModalScreen[tuple[bool, str | None]]):
    """Dismisses with (confirmed, note)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="confirm.cancel")]

    def __init__(self, title: str, question: str, *, yes: str = "Yes", note: bool = False,
                 danger: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.question = question
        self.yes = yes
        self.with_note = note
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-body") as body:
            body.border_title = self.title_text
            yield Static(self.question, id="confirm-question")
            if self.with_note:
                yield Input(placeholder="note (optional), kept with the action", id="confirm-note")
            with Horizontal(id="confirm-buttons"):
                yield Button(self.yes, variant="error" if self.danger else "primary", id="confirm-yes")
                yield Button("Cancel", id="confirm-no")

    def on_mount(self) -> None:
        if self.app.is_headless:
            for widget in self.query(Input):
                widget.cursor_blink = False
        self.query_one("#confirm-yes", Button).focus()

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
