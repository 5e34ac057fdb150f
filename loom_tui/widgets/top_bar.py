"""The line at the top of every screen: where you are, and the sections a key away."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import Static

from loom_tui.screens import section_key


CRUMB_SEPARATOR = " › "
_SHORTEST_CRUMB = 8


def fitted(crumbs: list[str], width: int) -> list[str]:
    """The crumbs in `width` cells, the longest shortened first, in its middle: a crumb's end
    says the most (the model's "(preview)", a file's name), so it stays."""
    def length() -> int:
        return sum(cell_len(crumb) + len(CRUMB_SEPARATOR) for crumb in crumbs)

    while crumbs and length() > width:
        longest = max(range(len(crumbs)), key=lambda i: cell_len(crumbs[i]))
        crumb = crumbs[longest]
        if cell_len(crumb) <= _SHORTEST_CRUMB:
            break  # the line's own cut takes over from here
        keep = cell_len(crumb) - 2  # one cell less, and one for the ellipsis
        head = (keep + 1) // 2
        crumbs[longest] = crumb[:head] + "…" + crumb[len(crumb) - (keep - head):]
    return crumbs


class TopBar(Static):
    DEFAULT_CSS = """
    TopBar {
        height: 1;
        background: $panel;
        color: $text;
        padding: 0 1;
    }
    """

    def show(self, active: str, crumbs: Sequence[str]) -> None:
        width = max(0, self.size.width - 2)
        tabs = self._tabs(active, compact=False)
        line = self._crumbs(crumbs)
        if line.cell_len + 1 + tabs.cell_len > width:
            # Narrow: the other sections by key only, the crumbs cut before the tabs are.
            tabs = self._tabs(active, compact=True)
            line = self._crumbs(fitted(list(crumbs), width - tabs.cell_len - 1 - len("Loom")))
            line.truncate(max(8, width - tabs.cell_len - 1), overflow="ellipsis")
        gap = max(1, width - line.cell_len - tabs.cell_len)
        line.append(" " * gap)
        line.append_text(tabs)
        self.update(line)

    def _crumbs(self, crumbs: Sequence[str]) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("Loom", f"bold {self.app.theme_variables.get('primary', '')}")
        for crumb in crumbs:
            line.append(CRUMB_SEPARATOR, "dim")
            line.append(crumb, "bold")
        return line

    def _tabs(self, active: str, *, compact: bool) -> Text:
        app = self.app
        variables = app.theme_variables
        tabs = Text(no_wrap=True)
        for section in getattr(app, "sections", ()):
            key = section_key(self.screen, section.mode)
            here = section.mode == active
            style = f"bold reverse {variables.get('accent', '')}" if here else "dim"
            tabs.append(f" {key} ", style if here else "bold")
            if here or not compact:
                tabs.append(f"{section.title} ", style)
        return tabs

    def on_resize(self) -> None:
        screen = self.screen
        refresh = getattr(screen, "refresh_top_bar", None)
        if refresh is not None:
            refresh()
