"""F1: what the screen underneath does, and every key that works on it (as remapped)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

GENERAL = (
    ("ctrl+p", "command palette: this screen's actions, other screens, themes"),
    ("tab / shift+tab", "move between panes"),
    ("j k ↑ ↓ pgup pgdn", "move in a list; long lists load the next page as you go"),
    ("g G home end", "the first / the last row of a list"),
    ("z", "maximise the focused pane (z or escape restores)"),
    ("? q", "help, and back (or quit) — wherever nothing is being typed"),
    ("enter / i · escape", "on the prompt: start typing · stop typing"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,f1,q", "dismiss", "Close", id="help.close"),
    ]

    def __init__(self, under: Screen[object]) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body") as body:
            body.border_title = "Help"
            body.border_subtitle = "escape closes"
            yield Static(self._text(), id="help-text")

    def _text(self) -> Table:
        app = self.app
        title = getattr(self.under, "TITLE", None) or type(self.under).__name__.replace("Screen", "")
        intro = getattr(self.under, "HELP", "")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, style=f"bold {app.theme_variables.get('accent', '')}")
        grid.add_column()
        grid.add_row(Text(str(title), style="bold"), "")
        if intro:
            grid.add_row("", Text(intro))
        grid.add_row("", "")
        here, everywhere = [], []
        seen = set()
        for key, active in self.under.active_bindings.items():
            binding = active.binding
            # Loom's own keys (they all have ids); list navigation is summed up below.
            if not binding.id or binding.id.startswith("table.") or not binding.description \
                    or (binding.action, binding.description) in seen:
                continue
            seen.add((binding.action, binding.description))
            shown = app.get_key_display(binding)
            row = (shown, binding.tooltip or binding.description)
            (everywhere if active.node is app else here).append(row)
        grid.add_row(Text("This screen", style="bold"), "")
        for key, text in here or [("", "no keys of its own")]:
            grid.add_row(key, text)
        grid.add_row("", "")
        grid.add_row(Text("Everywhere", style="bold"), "")
        for key, text in [*everywhere, *GENERAL]:
            grid.add_row(key, text)
        return grid
