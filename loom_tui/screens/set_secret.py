"""Store a secret in the keyring: its name, and its value in a masked field.

The value is drawn as bullets, never shown, never put in a message, a log line or a worker's
description; the worker that stores it takes it from a one-shot holder, and the field is
emptied once the keyring has it (or the dialog is cancelled). What the dialog returns is the
name only.
"""

from __future__ import annotations

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static
from textual.worker import Worker, WorkerState

from loom_tui import format as fmt
from loom_tui.messages import SecretStored
from loom_tui.widgets.masked_input import MaskedInput


class OneShot:
    """A value handed to a worker once: `take()` gives it and lets go of it, and its repr
    never shows it."""

    def __init__(self, value: str) -> None:
        self._value: str | None = value

    def take(self) -> str:
        value, self._value = self._value, None
        if value is None:
            raise RuntimeError("the value was already taken")
        return value

    def __repr__(self) -> str:
        return "<hidden>"


class NameInput(Input):
    """The name field. Enter hands over to the value field — and keys typed ahead of that
    (already on their way to this field) are dropped, never shown here: they are the value."""

    class TypedAhead(Message):
        """Keys meant for the value reached the name field and were dropped."""

    handed_over = False

    def _on_focus(self, event: events.Focus) -> None:
        self.handed_over = False
        super()._on_focus(event)

    async def _on_key(self, event: events.Key) -> None:
        # Enter is taken here, in this field's own queue of keys, not as a binding: a binding
        # runs once the key has bubbled up to the app, after the keys typed behind it were
        # already put in this field.
        if event.key == "enter" and not self.handed_over:
            event.stop()
            event.prevent_default()
            self.handed_over = True
            self.screen.set_focus(self.screen.query_one(MaskedInput))
            return
        if self.handed_over and event.is_printable:
            event.stop()
            event.prevent_default()
            self.post_message(self.TypedAhead())
            return
        await super()._on_key(event)

    def _on_paste(self, event: events.Paste) -> None:
        if self.handed_over:
            event.stop()
            self.post_message(self.TypedAhead())
            return
        super()._on_paste(event)


class SetSecretScreen(ModalScreen[SecretStored | None]):
    """Dismisses with what was stored (a name), or None when cancelled."""

    BINDINGS = [
        Binding("ctrl+s", "store", "Store", id="secret.store"),
        Binding("escape", "cancel", "Cancel", id="secret.cancel"),
    ]

    def __init__(self, name: str | None = None, *, stored: bool = False) -> None:
        super().__init__()
        self.secret_name = name
        self.replacing = stored
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="secret-body") as body:
            if self.secret_name and self.replacing:
                body.border_title = f"Replace the value of {self.secret_name}"
            elif self.secret_name:
                body.border_title = f"Store {self.secret_name} in the keyring"
            else:
                body.border_title = "Store a secret in the keyring"
            body.border_subtitle = "ctrl+s store · escape cancel"
            yield Static("Name, as pipelines write it: ${NAME}", classes="hint")
            yield NameInput(self.secret_name or "", placeholder="OPENAI_API_KEY",
                            id="secret-name")
            yield Static("Value (hidden; kept by the keyring only)", classes="hint")
            yield MaskedInput(placeholder="paste or type the value", id="secret-value")
            yield Static(id="secret-error", classes="error-line")
            with Horizontal(id="secret-buttons"):
                yield Button("Store", variant="primary", id="secret-store")
                yield Button("Cancel", id="secret-cancel")

    def on_mount(self) -> None:
        self.query_one("#secret-error").display = False
        if self.app.is_headless:
            for widget in self.query(Input):
                widget.cursor_blink = False
        if self.secret_name:
            self.query_one(MaskedInput).focus()
        else:
            self.query_one("#secret-name", Input).focus()

    @on(NameInput.TypedAhead)
    def _typed_ahead(self) -> None:
        # Part of the value went nowhere: what the value field holds is not what was typed.
        self.query_one(MaskedInput).forget()
        self._error("Keys typed before the value field had the focus were dropped: type the "
                    "value again.")

    @on(MaskedInput.Submitted)
    @on(Button.Pressed, "#secret-store")
    def action_store(self) -> None:
        if self.busy:
            return
        name = self.query_one("#secret-name", Input).value.strip()
        field = self.query_one(MaskedInput)
        if not name:
            self._error("Give the secret a name.")
            self.query_one("#secret-name", Input).focus()
            return
        if not field.value:
            self._error(f"The value of {name} is empty.")
            field.focus()
            return
        self.busy = True
        self._error("")
        self.query_one("#secret-store", Button).disabled = True
        self.store(name, OneShot(field.value), self.replacing)

    # The description is given: by default a worker's description is the repr of its
    # arguments, and Textual logs it.
    @work(thread=True, exclusive=True, group="secret", exit_on_error=False,
          description="store a secret in the keyring")
    def store(self, name: str, value: OneShot, replacing: bool) -> None:
        workspace = self.app.workspace  # type: ignore[attr-defined]
        # core reads the value back: a backend that keeps nothing (keyring.backends.null) is a
        # SecretError, shown by the worker-error handler like any other refusal.
        workspace.set_secret(name, value.take())
        self.post_message(SecretStored(name, replacing))

    @on(SecretStored)
    def _stored(self, event: SecretStored) -> None:
        event.stop()
        self.query_one(MaskedInput).forget()
        self.dismiss(event)

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        event.stop()
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            self._failed(fmt.error_line(event.worker.error))

    def _failed(self, message: str) -> None:
        self.busy = False
        self.query_one("#secret-store", Button).disabled = False
        self._error(message)

    def _error(self, message: str) -> None:
        error = self.query_one("#secret-error", Static)
        error.update(message)
        error.display = bool(message)

    @on(Button.Pressed, "#secret-cancel")
    def action_cancel(self) -> None:
        self.query_one(MaskedInput).forget()
        self.dismiss(None)
