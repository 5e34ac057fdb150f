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

from core.api import LoadedSpec, Workspace
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
        Binding("ctrl+q", "quit", "Quit", priority=True, id="app.quit"),
        Binding("f1", "help", "Help", id="app.help"),
        Binding("ctrl+t", "toggle_theme", "Light/dark", show=False, id="app.theme"),
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

    def on_mount(self) -> None:
        if self._theme_problem:
            self.notify(self._theme_problem, severity="warning")

    async def on_unmount(self) -> None:
        if self._owns_workspace:
            await self.workspace.close()

    # ------------------------------------------------------------------ actions

    async def action_section(self, mode: str) -> None:
        if mode != self.current_mode:
            await self.switch_mode(mode)

    def action_help(self) -> None:
        from loom_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def action_toggle_theme(self) -> None:
        self.theme = PAIR.get(self.theme, LOOM_DARK.name)

    async def action_quit(self) -> None:
        self.exit(0)

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
