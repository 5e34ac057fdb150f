"""The prompt as the model would receive it for the picked record, or the template's error
with its line."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.api import RenderResult


class RenderedPrompt(VerticalScroll):
    DEFAULT_CSS = """
    RenderedPrompt {
        height: 1fr;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.result: RenderResult | None = None  # what the pane shows now

    def compose(self):
        yield Static(Text("Pick a record to see its prompt.", style="dim"), id="rendered-text")

    def show(self, record_id: str, result: RenderResult) -> None:
        self.result = result
        colors = self.app.theme_variables
        body = self.query_one("#rendered-text", Static)
        if result.messages is None:
            where = f"line {result.error_line}: " if result.error_line and not (
                result.error or "").startswith("line ") else ""
            body.update(Group(
                Text(f"✗ template error {where}{result.error}", style=f"bold {colors.get('error', '')}"),
                Text("Every record fails at transform until the template renders.",
                     style="dim")))
            return
        parts = []
        for message in result.messages:
            parts.append(Text(f"── {message['role']} ──", style=f"bold {colors.get('secondary', '')}"))
            parts.append(Text(message["content"]))
        body.update(Group(*parts))

    def show_note(self, text: str) -> None:
        self.query_one("#rendered-text", Static).update(Text(text, style="dim"))
