"""What every Loom screen shares: the one place worker failures are shown, the palette's view
of the screen's actions, the top bar, and cursor blink off when nobody is watching."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input, TextArea
from textual.worker import Worker, WorkerState

from loom_tui.commands import ScreenActions
from loom_tui.format import error_line
from loom_tui.widgets.top_bar import TopBar

if TYPE_CHECKING:
    from core.api import Workspace
    from loom_tui.app import LoomApp


@dataclass(frozen=True)
class PaletteCommand:
    title: str
    help: str
    run: Callable[[], object]


class LoomScreen(Screen[None]):
    """A screen of the workbench. Subclasses set SECTION, HELP and their BINDINGS."""

    SECTION: ClassVar[str] = "pipelines"  # the top bar's tab this screen belongs to
    HELP: ClassVar[str] = ""  # a paragraph for the help screen
    COMMANDS = {ScreenActions}
    # A maximised pane (z) keeps the top bar and the footer: where you are, and the keys.
    ALLOW_IN_MAXIMIZED_VIEW = "TopBar, LoomFooter"

    @property
    def loom(self) -> "LoomApp":
        return self.app  # type: ignore[return-value]

    @property
    def workspace(self) -> "Workspace":
        return self.loom.workspace

    def crumbs(self) -> list[str]:
        """Where the top bar says we are, after the section."""
        return []

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:
        """Notifications carry data (a pipeline's name, an error about a file): plain text,
        never markup, unless a caller asks for it."""
        super().notify(message, markup=markup, **kwargs)

    def refresh_top_bar(self) -> None:
        for bar in self.query(TopBar):
            bar.show(self.SECTION, self.crumbs())

    def on_mount(self) -> None:
        self.refresh_top_bar()
        if self.app.is_headless:
            self.quiet_cursors()
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.restyle())

    def restyle(self) -> None:
        """The theme changed: redraw what was drawn with the old theme's colours (CSS follows
        by itself; Rich content built from theme colours does not)."""
        self.refresh_top_bar()

    def quiet_cursors(self) -> None:
        """No blinking cursors under test or benchmark: screenshots stay the same."""
        for widget in self.query("Input, TextArea"):
            if isinstance(widget, (Input, TextArea)):
                widget.cursor_blink = False

    # ------------------------------------------------------------------ the palette

    def palette_commands(self) -> Iterator[PaletteCommand]:
        """This screen's actions: its bindings with a description, then any extras."""
        seen = set()
        for binding in self._bindings_for_palette():
            # Loom's own actions (they have ids), not Textual's focus and scroll keys.
            if not binding.id or binding.action in seen or not binding.description:
                continue
            seen.add(binding.action)
            action = binding.action
            # No help line that repeats the title ("Back — Back").
            help_text = binding.tooltip if binding.tooltip != binding.description else ""
            yield PaletteCommand(binding.description, help_text or "",
                                 lambda action=action: self.run_action(action))
        yield from self.extra_commands()

    def _bindings_for_palette(self) -> Iterator[Binding]:
        for _key, binding in self._bindings:
            yield binding

    def extra_commands(self) -> Iterator[PaletteCommand]:
        return iter(())

    # ------------------------------------------------------------------ staying current

    def refresh_data(self) -> None:
        """Read what the screen shows again (it regained focus; a run may have written).
        Screens over the store override it; the rest show nothing that goes stale."""

    def on_screen_suspend(self) -> None:
        from textual.screen import ModalScreen

        # A dialog over the screen changes nothing under it; another screen or section may.
        self._covered_by_modal = isinstance(self.app.screen, ModalScreen)

    def resumed_from_elsewhere(self) -> bool:
        """Back from another screen or section (not from a dialog), since the first show."""
        first = not getattr(self, "_shown_once", False)
        self._shown_once = True
        return not first and not getattr(self, "_covered_by_modal", False)

    # ------------------------------------------------------------------ leaving

    def losses(self) -> list[str]:
        """What closing this screen now would lose, one line each (the quit and leave
        questions list them). Nothing, unless a screen says otherwise."""
        return []

    # ------------------------------------------------------------------ failures

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        """Every worker of this screen ends here when it fails: one line, never a crash."""
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            self.work_failed(event.worker.group, error_line(event.worker.error))

    def work_failed(self, group: str, message: str) -> None:
        """Show a failed worker's error. Screens override it to clear a busy state too."""
        self.notify(markup=False, message=message, title="error", severity="error", timeout=8)
