"""Edit a quarantined record's output by hand, then approve it.

The input it answers is shown above the editor; an output that never parsed starts from the
model's raw answer (the thing to fix), not from `{}`. Approving first runs the pipeline's
evaluators and gate on the edit (core.api.Workspace.check_edited): when it passes it loads;
when something still fails the dialog says what, and a second ctrl+s loads it anyway."""

from __future__ import annotations

import json

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static, TextArea

from core.api import ActionResult, EditCheck, QuarantinedRecord
from loom_tui import format as fmt
from loom_tui.messages import QuarantineActionsApplied


class EditChecking(Message):
    """The evaluators are looking at the edit."""


class EditChecked(Message):
    def __init__(self, check: EditCheck) -> None:
        self.check = check
        super().__init__()


def _input_text(data: object) -> Text:
    """The input, one field a line, in full (it is what the output has to answer)."""
    if not isinstance(data, dict):
        return Text(fmt.compact_json(data))
    text = Text()
    for i, (key, value) in enumerate(data.items()):
        if i:
            text.append("\n")
        text.append(f"{key}: ", "bold")
        text.append(value if isinstance(value, str) else fmt.compact_json(value))
    return text


class EditOutputScreen(ModalScreen[QuarantineActionsApplied | None]):
    """Dismisses with the applied action, or None when cancelled."""

    BINDINGS = [
        Binding("ctrl+s", "approve", "Approve", id="edit.approve"),
        Binding("escape", "cancel", "Cancel", id="edit.cancel"),
    ]

    def __init__(self, row: QuarantinedRecord) -> None:
        super().__init__()
        self.row = row
        self.checked: tuple[str, EditCheck] | None = None  # the text last checked, and what said

    def compose(self) -> ComposeResult:
        with Vertical(id="edit-body") as body:
            body.border_title = f"Edit the output of #{self.row.id} ({escape(self.row.record_id)}), then approve"
            body.border_subtitle = "ctrl+s check and approve · escape cancel"
            with VerticalScroll(id="edit-input") as given:
                given.border_title = "input"
                given.can_focus = False
                yield Static(_input_text(self.row.input), id="edit-input-text")
            if self.row.output is None and self.row.raw_output:
                yield Static(Text("The answer was not valid output: it is below as the model "
                                  "gave it. Fix it into JSON.", style="italic"),
                             id="edit-raw-note")
            yield TextArea(self._initial(), show_line_numbers=True, id="edit-output")
            yield Static(id="edit-error")
            yield Input(placeholder="note (optional), kept with the action", id="edit-note")
            with Horizontal(id="edit-buttons"):
                yield Button("Approve", variant="primary", id="edit-approve")
                yield Button("Cancel", id="edit-cancel")

    def on_mount(self) -> None:
        self.query_one("#edit-error").display = False
        if self.app.is_headless:
            for widget in self.query("TextArea, Input"):
                widget.cursor_blink = False  # type: ignore[attr-defined]
        self.query_one(TextArea).focus()

    def _initial(self) -> str:
        if self.row.output is not None:
            return fmt.pretty_json(self.row.output)
        raw = (self.row.raw_output or "").strip()
        if not raw:
            return "{\n}\n"
        try:
            return fmt.pretty_json(json.loads(raw))
        except ValueError:
            return raw + "\n"  # what to fix, as the model said it

    @on(Button.Pressed, "#edit-approve")
    def action_approve(self) -> None:
        text = self.query_one(TextArea).text
        try:
            output = json.loads(text)
        except json.JSONDecodeError as exc:
            self._error(f"not JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}")
            return
        note = self.query_one(Input).value.strip() or None
        self._error("")
        self.query_one("#edit-approve", Button).disabled = True
        # The same text checked already and it still fails: this press is "approve anyway".
        anyway = self.checked is not None and self.checked[0] == text
        self.approve(output, note, check=not anyway)

    @work(exclusive=True, group="edit", exit_on_error=False)
    async def approve(self, output: object, note: str | None, *, check: bool = True) -> None:
        workspace = self.app.workspace  # type: ignore[attr-defined]
        if check:
            self.post_message(EditChecking())
            verdict: EditCheck = await workspace.check_edited(self.row.id, output)
            if not verdict.passes:
                self.post_message(EditChecked(verdict))
                return
        result: ActionResult = await workspace.approve_edited(self.row.id, output, note=note)
        row = await workspace.quarantined(self.row.id)
        self.post_message(QuarantineActionsApplied("edit", [result], [row] if row else []))

    @on(EditChecking)
    def _checking(self, event: EditChecking) -> None:
        event.stop()
        self._error("checking the edit with the pipeline's evaluators…", tone="accent")

    @on(EditChecked)
    def _checked(self, event: EditChecked) -> None:
        event.stop()
        text = self.query_one(TextArea).text
        self.checked = (text, event.check)
        self.query_one("#edit-approve", Button).disabled = False
        lines = event.check.failing()
        if event.check.schema_error:
            self.checked = None  # a schema error cannot be loaded anyway: fix it
            self._error(f"not approved: the edited output {event.check.schema_error}")
            return
        self.query_one("#edit-approve", Button).label = "Approve anyway"
        self._error("still fails: " + "; ".join(lines) + " — ctrl+s again approves it anyway",
                    tone="warning")

    @on(QuarantineActionsApplied)
    def _applied(self, event: QuarantineActionsApplied) -> None:
        event.stop()
        self.query_one("#edit-approve", Button).disabled = False
        result = event.results[0]
        if result.loaded:
            self.dismiss(event)
        else:
            self._error(result.message)

    def on_worker_state_changed(self, event) -> None:  # type: ignore[no-untyped-def]
        if event.worker.error is not None:
            self.query_one("#edit-approve", Button).disabled = False
            self._error(fmt.error_line(event.worker.error))

    def _error(self, message: str, *, tone: str = "error") -> None:
        colors = self.app.theme_variables
        error = self.query_one("#edit-error", Static)
        error.update(Text(message, style=f"bold {colors.get(tone, '')}"))
        error.display = bool(message)

    @on(Button.Pressed, "#edit-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
