"""The `loom` workbench: a Textual app over core.api, nothing else.

Sections (modes, see screens/__init__.py): Pipelines (home; the workbench and runs are pushed
on it), Quarantine, History, Secrets. Keys live in bindings with ids, so `workbench.keymap` in
~/.loom/config.yaml remaps any of them; the palette (ctrl+p) offers the current screen's
actions; F1 shows the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from core.api import LoadedSpec, LoomError, Workspace
from loom_tui.commands import Sections
from loom_tui.screens import SECTIONS, Section
from loom_tui.themes import LOOM_DARK, PAIR, THEMES

STYLES = Path(__file__).parent / "styles"


class LoomApp(App[int]):
    TITLE = "Loom"
    CSS_PATH: ClassVar[list[str | Path]] = sorted(STYLES.glob("*.tcss"))  # type: ignore[assignment]
    COMMANDS = App.COMMANDS | {Sections}
    MODES: ClassVar[dict[str, Any]] = {section.mode: section.screen for section in SECTIONS}
    DEFAULT_MODE = SECTIONS[0].mode
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, id="app.quit",
                tooltip="Leave Loom (asks first if an edit or a run would be lost)"),
        # Not priority: where something is typed (the editor, a filter) `?` and `q` are text.
        Binding("f1,question_mark", "help", "Help", tooltip="Keys and what this screen does",
                id="app.help"),
        Binding("q", "quit", "Quit", tooltip="Leave Loom (asks first if an edit or a run "
                "would be lost)", id="app.quit_key"),
        Binding("z", "maximize", "Maximise", show=False, tooltip="Fill the screen with the "
                "focused pane, or give the others their place back", id="app.maximize"),
        Binding("ctrl+t", "toggle_theme", "Light/dark", show=False,
                tooltip="Switch between Loom's light and dark themes (remembered)",
                id="app.theme"),
        *(section.binding for section in SECTIONS),
    ]

    def __init__(self, folder: str | Path = ".", *, workspace: Workspace | None = None,
                 sample_size: int = 5, debounce_s: float = 0.8) -> None:
        super().__init__()
        self.folder = Path(folder).resolve()
        self._owns_workspace = workspace is None
        self.workspace = workspace or Workspace(self.folder)
        self.sections: tuple[Section, ...] = SECTIONS
        self.sample_size = sample_size
        self.debounce_s = debounce_s
        for theme in THEMES:
            self.register_theme(theme)
        settings = self.workspace.config.workbench
        self.theme = LOOM_DARK.name
        self._theme_problem: str | None = None
        if settings.theme:
            if settings.theme in self.available_themes:
                self.theme = settings.theme
            else:
                self._theme_problem = (f"workbench.theme {settings.theme!r} is not a theme "
                                       f"(try loom-dark or loom-light)")
        if settings.keymap:
            self.set_keymap(settings.keymap)
        self._shown_theme = self.theme  # what the next theme change is compared with

    def on_mount(self) -> None:
        if self._theme_problem:
            self.notify(self._theme_problem, severity="warning")
        self.theme_changed_signal.subscribe(self, self._remember_theme)

    async def on_unmount(self) -> None:
        if self._owns_workspace:
            await self.workspace.close()

    def _remember_theme(self, theme: Any) -> None:
        """The theme chosen here (ctrl+t or the palette's theme picker) is the next start's.
        Only a change counts: a configured theme that does not exist is left for the user
        to fix, not overwritten at start."""
        name = getattr(theme, "name", str(theme))
        if name == self._shown_theme:
            return
        self._shown_theme = name
        try:
            # A few hundred bytes: written here, not in a thread that could outlive the app.
            self.workspace.remember_theme(name)
        except LoomError as exc:
            self.notify(f"theme not remembered: {exc}", severity="warning")

    # ------------------------------------------------------------------ actions

    async def action_section(self, mode: str) -> None:
        """Go to a section; its own key, pressed inside it, goes back to its list."""
        from loom_tui.screens.confirm import ChoiceScreen, ConfirmScreen

        if isinstance(self.screen, (ConfirmScreen, ChoiceScreen)):
            return  # a question is open: answer it first
        if mode != self.current_mode:
            await self.switch_mode(mode)
            return
        above = [screen for screen in self.screen_stack[1:]]
        if not above:
            return
        losses = [loss for screen in above for loss in _losses(screen)]

        def back_to_list(leave: tuple[bool, str | None] | None = (True, None)) -> None:
            if leave and leave[0]:
                while len(self.screen_stack) > 1:
                    self.pop_screen()

        if losses:
            from loom_tui.screens.confirm import ConfirmScreen

            self.push_screen(ConfirmScreen("Leave?", _question(losses, "Leave anyway?"),
                                           yes="Leave", danger=True), back_to_list)
        else:
            back_to_list()

    def notify(self, message: str, *, markup: bool = False, **kwargs: Any) -> None:
        """Plain text by default: messages carry data (file names, errors, record ids)."""
        super().notify(message, markup=markup, **kwargs)

    def on_app_focus(self) -> None:
        """The terminal has the focus again: what the screen shows may be stale (a run in
        another terminal, a `loom quarantine approve`)."""
        refresh = getattr(self.screen, "refresh_data", None)
        if callable(refresh):
            refresh()

    def action_help(self) -> None:
        from loom_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def action_toggle_theme(self) -> None:
        self.theme = PAIR.get(self.theme, LOOM_DARK.name)

    def action_maximize(self) -> None:
        """Fill the screen with the focused widget's pane (z again, or escape, restores)."""
        screen = self.screen
        if screen.maximized is not None:
            screen.minimize()
            return
        focused = screen.focused
        pane = next((node for node in ([focused, *focused.ancestors] if focused else [])
                     if getattr(node, "has_class", None) and node.has_class("pane")), None)
        if pane is not None:
            screen.maximized = pane

    def losses(self) -> list[str]:
        """What quitting now would lose, on every section's screens: unsaved prompt edits,
        runs still going."""
        stacks = getattr(self, "_screen_stacks", {}) or {self.current_mode: self.screen_stack}
        return [loss for stack in stacks.values() for screen in stack
                for loss in _losses(screen)]

    async def action_quit(self) -> None:
        losses = self.losses()
        if not losses:
            self.exit(0)
            return
        from loom_tui.screens.confirm import ConfirmScreen

        if any(isinstance(screen, ConfirmScreen) and screen.title_text == "Quit Loom?"
               for screen in self.screen_stack):
            return

        def decided(answer: tuple[bool, str | None] | None) -> None:
            if answer and answer[0]:
                self.exit(0)

        self.push_screen(ConfirmScreen("Quit Loom?", _question(losses, "Quit anyway?"),
                                       yes="Quit", danger=True), decided)

    # ------------------------------------------------------------------ navigation

    def open_pipeline(self, path: Path) -> None:
        from loom_tui.screens.workbench import WorkbenchScreen

        self.push_screen(WorkbenchScreen(path))

    def start_run(self, path: Path) -> None:
        from loom_tui.screens.run import RunScreen

        self.push_screen(RunScreen(path))

    def resume_run(self, path: Path, run_id: str) -> None:
        """Finish an unfinished run (core.api.Workspace.prepare_resume), watched live."""
        from loom_tui.screens.run import RunScreen

        self.push_screen(RunScreen(path, resume=run_id))

    def confirm_run(self, path: Path, loaded: LoadedSpec | None = None) -> None:
        """Start a run; a big one (cost, time, records, budget) shows its estimate and asks."""
        from loom_tui.screens.estimate import EstimateScreen

        def then(run: bool | None) -> None:
            if run:
                self.start_run(path)

        self.push_screen(EstimateScreen(path, loaded, confirm=True), then)

    def estimate(self, path: Path, loaded: LoadedSpec | None = None) -> None:
        """What a whole run of the pipeline would cost and take; run it from there if wanted."""
        from loom_tui.screens.estimate import EstimateScreen

        def then(run: bool | None) -> None:
            if run:
                self.start_run(path)

        self.push_screen(EstimateScreen(path, loaded), then)

    async def show_quarantine(self, *, run_id: str | None = None,
                              pipeline: str | None = None) -> None:
        """The quarantine section, filtered to one run or pipeline."""
        await self.action_section("quarantine")
        screen = self.screen
        set_filters = getattr(screen, "set_filters", None)
        if set_filters is not None:
            set_filters(run_id=run_id, pipeline=pipeline)


def _losses(screen: object) -> list[str]:
    losses = getattr(screen, "losses", None)
    return list(losses()) if callable(losses) else []


def _question(losses: list[str], ask: str) -> str:
    return "\n".join(f"• {loss}" for loss in losses) + f"\n\n{ask}"
