"""The line at the top of every screen: where you are, and the sections a key away."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static


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
        app = self.app
        variables = app.theme_variables
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("Loom", f"bold {variables.get('primary', '')}")
        for crumb in crumbs:
            line.append(" › ", "dim")
            line.append(crumb, "bold")
        width = max(0, self.size.width - 2)
        tabs = self._tabs(active, compact=False)
        if line.cell_len + 1 + tabs.cell_len > width:
            # Narrow: the other sections by key only, the crumbs cut before the tabs are.
            tabs = self._tabs(active, compact=True)
            line.truncate(max(8, width - tabs.cell_len - 1), overflow="ellipsis")
        gap = max(1, width - line.cell_len - tabs.cell_len)
        line.append(" " * gap)
        line.append_text(tabs)
        self.update(line)

    def _tabs(self, active: str, *, compact: bool) -> Text:
        app = self.app
        variables = app.theme_variables
        tabs = Text(no_wrap=True)
        for section in getattr(app, "sections", ()):
            key = app.get_key_display(section.binding) if hasattr(app, "get_key_display") else ""
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
