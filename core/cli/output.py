"""What every command prints through: the stdout console, `--json` text, table cells from data.

Rich is imported when a command prints, not when the command line is parsed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from core.terminal_text import printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


def out_console() -> Console:
    """stdout for people; when piped, wide enough that tables do not wrap into columns of words.
    Markup off (core.console.make_console): what the store holds prints as written."""
    from core.console import make_console

    console = make_console()
    if not console.is_terminal:
        console = make_console(width=200)
    return console


def json_out(value: Any, **options: Any) -> str:
    """`--json` output: always JSON (a NaN or an Infinity from the data prints as null)."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        from core.store.engine import finite_json

        return json.dumps(finite_json(value), allow_nan=False, **options)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def data_text(value: Any, style: str = "") -> Text:
    """A table cell or a line part from data: one line, nothing a terminal would obey."""
    from rich.text import Text

    return Text(printable(str(value)), style=style)
