"""One record's parts as people read them: its input fields, the prompt rendered for it, the
model's raw answer and its output. The workbench's record inspector (inspect.py) and the
quarantine's detail pane (quarantine_detail.py) both draw a record with these, so a record
reads the same wherever it is inspected. Every value is data: Text, never markup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from loom_tui import format as fmt


def heading(label: str, colors: Mapping[str, str]) -> Text:
    return Text(f"\n── {label} ──", style=f"bold {colors.get('secondary', '')}")


def input_fields(data: Mapping[str, Any] | None) -> RenderableType:
    """Every field in full, one a row (a long text wraps under itself)."""
    if not data:
        return Text("no input", style="dim")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1)
    for key, value in data.items():
        shown = value if isinstance(value, str) else fmt.compact_json(value)
        grid.add_row(Text(str(key)), Text(str(shown)))
    return grid


def rendered_messages(messages: Sequence[Mapping[str, Any]] | None, *,
                      missing: str = "not kept") -> list[RenderableType]:
    """The messages the call sent, each under its role."""
    if messages is None:
        return [Text(missing, style="dim")]
    parts: list[RenderableType] = []
    for message in messages:
        parts.append(Text(f"── {message.get('role', '?')} ──", style="dim"))
        parts.append(Text(str(message.get("content", ""))))
    return parts


def raw_answer(text: str | None) -> Text:
    if text:
        return Text(text)
    return Text("none: it stopped before the model answered", style="dim")


def output_json(value: Any, dark: bool) -> RenderableType:
    if value is None:
        return Text("no valid output", style="dim")
    return Syntax(fmt.pretty_json(value), "json", theme="monokai" if dark else "default",
                  background_color="default", word_wrap=True)
