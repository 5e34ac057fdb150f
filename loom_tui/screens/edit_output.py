"""Edit a quarantined record's output by hand, then approve it (it must still match the
pipeline's output_schema: the error, if any, shows here and the editor stays open)."""

from __future__ import annotations

import json

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static, TextArea

from core.api import ActionResult, QuarantinedRecord
from loom_tui import format as fmt
from loom_tui.messages import QuarantineActionsApplied


class EditOutputScreen(ModalScreen[QuarantineActionsApplied | None]):
    """Dismisses with the applied action, or None when cancelled."""

    BINDINGS = [
        Binding("ctrl+s", "approve", "Approve", id="edit.approve"),
        Binding("escape", "cancel", "Cancel", id="edit.cancel"),
    ]

    def __init__(self, row: QuarantinedRecord) -> None:
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        with Vertical(id="edit-body") as body:
            body.border_title = f"Edit the output of #{self.row.id} ({self.row.record_id}), then approve"
            body.border_subtitle = "ctrl+s approve · escape cancel"
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
        try:
            return fmt.pretty_json(json.loads(raw))
        except ValueError:
            return "{\n}\n"

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
        self.approve(output, note)

    @work(exclusive=True, group="edit", exit_on_error=False)
    async def approve(self, output: object, note: str | None) -> None:
        workspace = self.app.workspace  # type: ignore[attr-defined]
        result: ActionResult = await workspace.approve_edited(self.row.id, output, note=note)
        row = await workspace.quarantined(self.row.id)
        self.post_message(QuarantineActionsApplied("edit", [result], [row] if row else []))

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

    def _error(self, message: str) -> None:
        colors = self.app.theme_variables
        error = self.query_one("#edit-error", Static)
        error.update(Text(message, style=f"bold {colors.get('error', '')}"))
        error.display = bool(message)

    @on(Button.Pressed, "#edit-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
