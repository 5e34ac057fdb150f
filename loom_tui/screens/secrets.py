"""Secrets: the `${NAME}` values Loom keeps in the keyring (service `loom`), by name only.

Lists the names stored with `loom secrets set` (or here) beside the names the folder's
pipelines ask for — where each one would resolve from, or that it is missing — and the keyring
backend in use. Sets a value through a masked dialog and deletes one after asking. Values are
never read back, shown or kept. The keyring calls block (a desktop keyring may ask D-Bus):
thread workers make them. When there is no usable keyring the screen says so, and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static

from core.api import LoomError
from loom_tui import format as fmt
from loom_tui.messages import PageWanted, SecretDeleted, SecretRefused, SecretsListed, SecretStored
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.paged_table import Cell, Column, PagedTable, Row, Tone
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.top_bar import TopBar

COLUMNS = (
    Column("name", 28),
    Column("resolves from", 16),
    Column("used by", None, min_width=12),
)
# Backends that take a value without keeping it: "stored" would be a lie.
KEEPS_NOTHING = {"keyring.backends.null.Keyring"}
FIX = ("pip install keyrings.alt, then export "
       "PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring and start loom again (docs/how-to/"
       "secrets.md) — or export each secret as an environment variable: runs read the environment "
       "when the keyring is unusable.")


@dataclass(frozen=True)
class SecretLine:
    name: str
    in_keyring: bool
    in_environment: bool
    used_by: tuple[str, ...]


class SecretsScreen(LoomScreen):
    SECTION = "secrets"
    TITLE = "Secrets"
    HELP = ("The secrets Loom keeps in the keyring (service loom), by name: their values are "
            "never shown. Beside them, every ${NAME} the folder's pipelines ask for and where "
            "a run would find it — the keyring first, then the environment — or that it is "
            "missing. n stores a new secret, enter replaces the highlighted one's value (typed "
            "into a masked field), d deletes it. Below the list: the keyring backend in use, or "
            "why there is no usable keyring and what to do about it.")
    BINDINGS = [
        Binding("n", "new", "New secret", tooltip="Store a secret in the keyring",
                id="secrets.new"),
        Binding("enter", "set", "Set value", tooltip="Store a (new) value for this name",
                id="secrets.set"),
        Binding("d", "delete", "Delete", tooltip="Delete this secret from the keyring (asks first)",
                id="secrets.delete"),
        Binding("ctrl+r", "refresh", "Refresh", tooltip="Read the keyring and the pipelines again",
                id="secrets.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.backend: str | None = None
        self.problem: str | None = None
        self.listed: SecretsListed | None = None
        self._keep: str | None = None  # the name the cursor goes back to after a change

    def compose(self) -> ComposeResult:
        yield TopBar()
        with Vertical(id="s-list", classes="pane") as pane:
            pane.border_title = "Secrets"
            pane.border_subtitle = "values are never shown"
            yield PagedTable(COLUMNS, page_size=10_000, id="s-table",
                             empty="no secrets yet: n stores one")
        with Vertical(id="s-keyring", classes="pane") as keyring:
            keyring.border_title = "Keyring"
            yield Static(Text("reading the keyring…", style="dim"), id="s-keyring-text")
        yield LoomFooter()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(PagedTable).focus()
        self.query_one(PagedTable).reset()

    # ------------------------------------------------------------------ reading

    @on(PageWanted, "#s-table")
    def _page_wanted(self, event: PageWanted) -> None:
        if event.direction == "first":
            self.list_secrets()

    @work(thread=True, exclusive=True, group="list", exit_on_error=False)
    def list_secrets(self) -> None:
        workspace = self.workspace
        names: list[str] = []
        backend = problem = None
        try:
            backend = workspace.secrets_backend()
            names = workspace.secret_names()
        except LoomError as exc:  # no usable keyring: the screen says what to do
            problem = str(exc)
        references = workspace.secret_references()
        every = set(names) | set(references)
        self.post_message(SecretsListed(names, backend, problem, references,
                                        {name for name in every if name in os.environ}))

    @on(SecretsListed)
    def _listed(self, event: SecretsListed) -> None:
        self.listed = event
        self.backend, self.problem = event.backend, event.problem
        stored = set(event.names)
        lines = [SecretLine(name, name in stored, name in event.in_environment,
                            tuple(event.references.get(name, ())))
                 for name in sorted(stored | set(event.references))]
        table = self.query_one(PagedTable)
        table.empty_text = ("no secrets: the keyring is unusable (see below)" if event.problem
                            else "no secrets yet: n stores one")
        table.total = len(lines)
        table.show_page([Row(line.name, self._cells(line), line) for line in lines], "first",
                        table.generation)
        keys = [line.name for line in lines]
        if self._keep in keys:
            table.cursor = keys.index(self._keep)
        self._keep = None
        missing = sum(1 for line in lines if not line.in_keyring and not line.in_environment)
        subtitle = (f"{fmt.plural(len(stored), 'secret')} in the keyring" if event.problem is None
                    else "no usable keyring")
        self.query_one("#s-keyring").set_class(event.problem is not None, "-problem")
        if missing:
            subtitle += f" · {missing} missing"
        self.query_one("#s-list").border_subtitle = subtitle + " · values are never shown"
        self._draw_keyring()

    def _cells(self, line: SecretLine) -> tuple[Cell, ...]:
        if line.in_keyring:
            where = Tone("keyring" + (" (+ env)" if line.in_environment else ""), "success")
        elif line.in_environment:
            where = Tone("environment", "secondary")
        elif self.workspace.config.credentials.provider == "aws_secrets":
            where = Tone("AWS, if anywhere", "warning")
        else:
            where = Tone("✗ missing", "error")
        used = ", ".join(line.used_by) if line.used_by else Tone("no pipeline here", "dim")
        return (line.name, where, used)

    def restyle(self) -> None:
        super().restyle()
        if self.listed is not None:
            self._draw_keyring()

    def _draw_keyring(self) -> None:
        colors = self.app.theme_variables
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        if self.problem is not None:
            problem = self.problem[:1].upper() + self.problem[1:]
            grid.add_row("keyring", Text(f"✗ {problem}", style=f"bold {colors.get('error', '')}"))
            grid.add_row("what to do", FIX)
        else:
            grid.add_row("backend", Text.assemble((self.backend or "?", "bold"), "  service loom"))
            if self.backend in KEEPS_NOTHING:
                grid.add_row("", Text(f"{self.backend} keeps nothing: secrets set here are not "
                                      f"stored. {FIX}", style=colors.get("warning", "")))
        order = "the keyring, then the environment"
        if self.workspace.config.credentials.provider == "aws_secrets":
            order += ", then AWS Secrets Manager"
        grid.add_row("${NAME}", f"a run looks in {order}; values are never stored in the "
                     "history, never shown here")
        self.query_one("#s-keyring-text", Static).update(grid)

    def work_failed(self, group: str, message: str) -> None:
        if group == "list":
            table = self.query_one(PagedTable)
            table.page_failed("first", table.generation)
        super().work_failed(group, message)

    # ------------------------------------------------------------------ setting, deleting

    def _highlighted(self) -> SecretLine | None:
        row = self.query_one(PagedTable).highlighted
        return row.item if row is not None else None

    def _usable(self) -> bool:
        if self.problem is not None:
            self.notify(f"No usable keyring: {FIX}", severity="error", timeout=10)
            return False
        return self.listed is not None

    def action_new(self) -> None:
        if self._usable():
            self._ask_value(None, stored=False)

    def action_set(self) -> None:
        line = self._highlighted()
        if line is None:
            self.action_new()
        elif self._usable():
            self._ask_value(line.name, stored=line.in_keyring)

    @on(PagedTable.Activated, "#s-table")
    def _activated(self) -> None:
        self.action_set()

    def _ask_value(self, name: str | None, *, stored: bool) -> None:
        from loom_tui.screens.set_secret import SetSecretScreen

        def done(event: SecretStored | None) -> None:
            if event is not None:
                self._stored(event)

        self.app.push_screen(SetSecretScreen(name, stored=stored), done)

    def _stored(self, event: SecretStored) -> None:
        """The dialog closed with a secret stored (its name; the value stayed there)."""
        verb = "replaced the value of" if event.replaced else "stored"
        self.notify(f"{verb} {event.name} in the keyring ({self.backend}); pipelines use it as "
                    f"${{{event.name}}}", title="secret", timeout=6)
        self._keep = event.name
        self.query_one(PagedTable).reset()

    def action_delete(self) -> None:
        line = self._highlighted()
        if line is None or not self._usable():
            return
        if not line.in_keyring:
            self.notify(f"{line.name} is not in the keyring"
                        + (" (it comes from the environment)." if line.in_environment else "."),
                        severity="warning")
            return
        from loom_tui.screens.confirm import ConfirmScreen

        def decided(answer: tuple[bool, str | None] | None) -> None:
            if answer and answer[0]:
                self.delete(line.name)

        users = f" {', '.join(line.used_by)} will look for it in the environment instead." \
            if line.used_by else ""
        self.app.push_screen(ConfirmScreen(
            "Delete secret", f"Delete {line.name} from the keyring?{users}", yes="Delete",
            danger=True), decided)

    @work(thread=True, exclusive=True, group="delete", exit_on_error=False)
    def delete(self, name: str) -> None:
        try:
            self.workspace.delete_secret(name)
        except LoomError as exc:
            self.post_message(SecretRefused(name, str(exc)))
            return
        self.post_message(SecretDeleted(name))

    @on(SecretDeleted)
    def _deleted(self, event: SecretDeleted) -> None:
        self.notify(f"deleted {event.name} from the keyring", title="secret", timeout=6)
        self.query_one(PagedTable).reset()

    @on(SecretRefused)
    def _refused(self, event: SecretRefused) -> None:
        self.notify(markup=False, message=event.error, title=f"secret {event.name}", severity="error", timeout=10)

    def action_refresh(self) -> None:
        row = self.query_one(PagedTable).highlighted
        self._keep = row.key if row is not None else None  # type: ignore[assignment]
        self.query_one(PagedTable).reset()
