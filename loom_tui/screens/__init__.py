"""The screen registry: the workbench's sections, each a mode with its own screen stack.

Adding a screen people reach from anywhere is one `Section` here: the app builds its modes, the
top bar's tabs, the key that opens it and the palette's "Go to …" command from this list.
Screens reached from a section (the workbench, a run, a comparison) are pushed onto it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from textual.binding import Binding
from textual.screen import Screen


@dataclass(frozen=True)
class Section:
    mode: str
    title: str
    key: str
    description: str
    screen: Callable[[], Screen[None]]

    @property
    def binding(self) -> Binding:
        # A priority binding: the prompt editor takes F6 and F7 (select line, select all) for
        # itself otherwise, and a section key should work from every screen.
        return Binding(self.key, f"app.section('{self.mode}')", self.title, show=False,
                       tooltip=f"Go to {self.title}: {self.description.lower()}",
                       id=f"section.{self.mode}", priority=True)


def _pipelines() -> Screen[None]:
    from loom_tui.screens.pipelines import PipelinesScreen

    return PipelinesScreen()


def _quarantine() -> Screen[None]:
    from loom_tui.screens.quarantine import QuarantineScreen

    return QuarantineScreen()


def _history() -> Screen[None]:
    from loom_tui.screens.history import HistoryScreen

    return HistoryScreen()


def _secrets() -> Screen[None]:
    from loom_tui.screens.secrets import SecretsScreen

    return SecretsScreen()


# F5 is not a section's: the workbench runs its pipeline with it.
SECTIONS: tuple[Section, ...] = (
    Section("pipelines", "Pipelines", "f2", "Every pipeline under the folder: open, run", _pipelines),
    Section("quarantine", "Quarantine", "f3",
            "Records that did not pass: approve, edit, reprocess, discard", _quarantine),
    Section("history", "History", "f4", "Runs, cost and latency across runs, compare two runs",
            _history),
    Section("secrets", "Secrets", "f6", "Secrets in the keyring, by name: set, delete",
            _secrets),
)


def section_key(screen: Screen[object], mode: str) -> str:
    """The key that opens a section now, as hints name it: `workbench.keymap`'s remaps are
    in the screen's active bindings (the section keys are priority bindings of the app)."""
    binding_id = f"section.{mode}"
    for active in screen.active_bindings.values():
        if active.binding.id == binding_id:
            return screen.app.get_key_display(active.binding)
    section = next(section for section in SECTIONS if section.mode == mode)
    return screen.app.get_key_display(section.binding)
