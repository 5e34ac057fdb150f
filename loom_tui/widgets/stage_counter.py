"""One stage of a run (extracted, transformed, …) as a big number with its label."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static


SHORT = {"extracted": "read", "transformed": "transf.", "evaluated": "judged",
         "quarantined": "quar.", "skipped": "skip"}


class StageCounter(Static):
    DEFAULT_CSS = """
    StageCounter {
        width: 1fr;
        height: 3;
        border: round $foreground 25%;
        border-title-color: $text-muted;
        content-align: center middle;
        text-align: center;
        background: $surface;
    }
    StageCounter.-good { border: round $success 60%; }
    StageCounter.-bad { border: round $warning 60%; }
    """

    value: reactive[int] = reactive(0)

    def __init__(self, label: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.label = label
        self.border_title = label

    def on_resize(self) -> None:
        # A tile a sixth of 80 columns: the short label, never "extrac…".
        room = self.size.width - 3  # inside the border, less the title's own padding
        self.border_title = self.label if len(self.label) <= room else \
            SHORT.get(self.label, self.label)

    def render(self) -> Text:
        return Text(f"{self.value:,}", style="bold")
