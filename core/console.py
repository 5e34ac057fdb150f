"""The console Loom prints through, and the small formatters every table uses.

Its own module, apart from core.reporting's live progress, so that a listing (`loom runs`,
`loom quarantine list`) imports Rich's console and text but not the run's event types,
progress bars or estimates.

Text from data is never parsed as Rich markup: every console comes from `make_console`, which
has markup off, and Loom's own styles are `Text` spans (`styled`).
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from core.run_status import RunStatus
from core.terminal_text import printable_layout

STATUS_STYLE = {RunStatus.SUCCESS: "green", RunStatus.PARTIAL: "yellow", RunStatus.FAILED: "red",
                RunStatus.CANCELLED: "magenta", RunStatus.RUNNING: "cyan"}


class _NeutralisingConsole(Console):
    """A console that neutralises escapes in every piece of text it draws.

    The printers escape data themselves (core.terminal_text.printable: a newline in a record
    id must not start a line); this is the backstop for whatever reaches a table, a progress
    line or a summary without it. Only text segments are touched: Rich's own styles and its
    cursor movements (control segments) are written as Rich makes them.
    """

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(printable_layout(segment.text),
                                                    segment.style)
            for segment in buffer)


def make_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """The one way Loom makes a console: markup off, so no text is ever parsed as markup, and
    terminal escapes from data neutralised."""
    return _NeutralisingConsole(stderr=stderr, width=width, markup=False)


def styled(*parts: str | tuple[str, str] | Text) -> Text:
    """Loom's own styling around data: `styled(("ok", "green"), " ", name)`; plain strings are
    text as written, never markup."""
    return Text.assemble(*parts)


def money(value: float | None) -> str:
    """Never a made-up price: an unknown cost says so (the workbench writes costs with it too)."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value >= 0.01 else f"${value:.6f}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
