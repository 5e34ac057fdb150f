"""Command palette providers (ctrl+p).

`ScreenActions` offers what the current screen can do — its own bindings, described, plus any
extra commands the screen adds — so the palette always matches the screen you are on.
`Sections` offers the other screens. Every Loom screen lists `ScreenActions` in COMMANDS; the
app lists `Sections` (and Textual's system commands: theme, keys, quit).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider


class _Commands(Provider):
    def commands(self) -> Iterator[tuple[str, str, Any]]:
        """(title, help, callback) for each action the screen offers; each screen's provider
        lists its own."""
        return iter(())

    # The palette reads a command's title and help as markup; titles carry data (a prompt
    # variant's file name, its description): escaped, they show as typed, never as styles.
    # (textual.markup.escape leaves "[ b]" to be eaten as a tag: every bracket is escaped.)
    async def discover(self) -> Hits:
        for title, help_text, run in self.commands():
            yield DiscoveryHit(_literal(title), run, text=title, help=_literal(help_text or ""))

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self.commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(_literal(title)), run, text=title,
                          help=_literal(help_text or ""))


class ScreenActions(_Commands):
    """The calling screen's actions."""

    def commands(self) -> Iterator[tuple[str, str, Any]]:
        screen = self.screen
        palette = getattr(screen, "palette_commands", None)
        if palette is None:
            return
        for command in palette():
            yield command.title, command.help, command.run


class Sections(_Commands):
    """Go to another part of the workbench."""

    def commands(self) -> Iterator[tuple[str, str, Any]]:
        app = self.app
        for section in getattr(app, "sections", ()):
            yield (f"Go to {section.title}", section.description,
                   lambda mode=section.mode: app.run_action(f"section('{mode}')"))
        yield "Help", "Keys and what this screen does", lambda: app.run_action("help")
        # Themes: Textual's own "Theme" command (every theme, previewed) is the one entry.


def _literal(text: str) -> str:
    """`text` as Textual markup that shows exactly `text`."""
    return text.replace("[", "\\[")
