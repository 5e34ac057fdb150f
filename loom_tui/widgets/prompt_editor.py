"""The prompt file in an editor: every change is posted as PromptEdited (the screen
debounces it)."""

from __future__ import annotations

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

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", soft_wrap=True, show_line_numbers=True, tab_behavior="focus", id=id)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self.post_message(PromptEdited(self.text))
