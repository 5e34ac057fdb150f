"""The footer: the keys that work in the focused pane, the way out and help first.

Textual's Footer lists the focused widget's keys, then the screen's, then the app's, so on an
80-column terminal the keys a newcomer needs most (help, back) are the ones cut off. This one
lists those first, and leaves the rest in Textual's order. A key that would not fit whole is
left out (Textual draws the row past the edge, so a cut key showed as a stray letter)."""

from __future__ import annotations

from rich.cells import cell_len
from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

FIRST = ("back", "stop_editing", "help", "quit")  # actions, in the order they lead


class LoomFooter(Footer):
    def on_resize(self) -> None:
        # Under 120 columns, keys sit closer together: more of them fit.
        compact = self.app.size.width < 120
        if compact != self.compact or self.app.size.width != getattr(self, "_laid_out_for", None):
            self.compact = compact
            self.refresh(recompose=True)  # which keys fit depends on the width

    def _width(self, key_display: str, description: str, *, palette: bool = False) -> int:
        """The cells a FooterKey takes, with its margin (Textual's footer CSS)."""
        cells = cell_len(key_display) + cell_len(description)
        if self.compact:
            return cells + 2  # a space between them, a margin after (the palette: a border)
        return cells + 3 + (2 if palette else 0)  # padding around the key and after the text

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        active = self.screen.active_bindings
        shown: dict[str, tuple] = {}
        for _node, binding, enabled, tooltip in active.values():
            if binding.show and binding.action not in shown:
                shown[binding.action] = (binding, enabled, tooltip)

        def rank(action: str) -> int:
            name = action.rsplit(".", 1)[-1].split("(", 1)[0]
            return FIRST.index(name) if name in FIRST else len(FIRST)

        # A screen with a way back shows it; quitting is one more screen away (ctrl+q stays).
        if any(rank(action) == 0 for action in shown):
            shown = {a: b for a, b in shown.items() if a.rsplit(".", 1)[-1] != "quit"}
        ordered = sorted(shown, key=rank)  # sorted() is stable: the rest keep their order
        width = self.app.size.width
        self._laid_out_for = width
        used = 0
        palette = self.app.COMMAND_PALETTE_BINDING
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE and palette in active:
            binding = active[palette][1]
            used = self._width(self.app.get_key_display(binding), binding.description, palette=True)
        for action in ordered:
            binding, enabled, tooltip = shown[action]
            used += self._width(self.app.get_key_display(binding), binding.description)
            if used > width:
                break  # this key and the rest would be cut: the palette (ctrl+p) lists them all
            yield FooterKey(binding.key, self.app.get_key_display(binding), binding.description,
                            binding.action, disabled=not enabled,
                            tooltip=tooltip).data_bind(compact=Footer.compact)
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            try:
                _node, binding, enabled, tooltip = active[self.app.COMMAND_PALETTE_BINDING]
            except KeyError:
                pass
            else:
                yield FooterKey(binding.key, self.app.get_key_display(binding),
                                binding.description, binding.action,
                                classes="-command-palette", disabled=not enabled,
                                tooltip=binding.tooltip or binding.description)
