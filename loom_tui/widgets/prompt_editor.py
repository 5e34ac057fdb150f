"""The prompt file in an editor: every change is posted as PromptEdited (the screen
debounces it).

Editing is a mode, as in vim or lazygit's commit editor: the editor opens read-only, so a key
meant for the screen (`+`, `j`, `q`, Enter) never lands in the prompt. Enter or `i` starts
editing, Escape stops; the screen hears both (`EditingChanged`) to swap its footer.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from loom_tui.messages import PromptEdited


class PromptEditor(TextArea):
    DEFAULT_CSS = """
    PromptEditor {
        height: 1fr;
        border: none;
        padding: 0;
    }
    PromptEditor:focus {
        border: none;
    }
    """

    BINDINGS = [
        Binding("enter,i", "start_editing", "Edit prompt", tooltip="Type into the prompt "
                "(escape stops)", id="editor.edit"),
        Binding("escape", "stop_editing", "Stop editing", tooltip="Leave the editor: keys "
                "work on the screen again", id="editor.stop"),
    ]

    @dataclass
    class EditingChanged(Message):
        editor: "PromptEditor"
        editing: bool

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", soft_wrap=True, show_line_numbers=True, tab_behavior="focus",
                         read_only=True, id=id)

    @property
    def editing(self) -> bool:
        return not self.read_only

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start_editing":
            return not self.editing
        if action == "stop_editing":
            return self.editing
        return super().check_action(action, parameters)

    def action_start_editing(self) -> None:
        self.focus()
        if self.read_only:
            self.read_only = False
            self.post_message(self.EditingChanged(self, True))
            self.refresh_bindings()

    def action_stop_editing(self) -> None:
        if not self.read_only:
            self.read_only = True
            self.post_message(self.EditingChanged(self, False))
            self.refresh_bindings()

    def _on_blur(self, event) -> None:  # type: ignore[no-untyped-def]
        # Leaving the pane (tab, a click elsewhere, a modal) leaves the editing mode too: coming
        # back to the pane must not start typing.
        if self.app.screen is self.screen:
            self.action_stop_editing()
        super()._on_blur(event)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self.post_message(PromptEdited(self.text))
