"""Two runs side by side: what they ran with (prompt and context versions, model, params) and
what came of it (records, rejection, cost, latency, each evaluator's pass rate), the
differences marked, and the diff of the two prompts when the store has both."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from core.api import ComparedValue, RunComparison
from loom_tui import format as fmt
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.top_bar import TopBar


class CompareScreen(LoomScreen):
    SECTION = "history"
    TITLE = "Compare runs"
    HELP = ("Two runs side by side, the older as A. Lines that differ are marked ≠. The prompt "
            "diff shows what changed between the two prompt versions.")
    BINDINGS = [Binding("escape,q", "back", "Back", id="compare.back")]

    def __init__(self, comparison: RunComparison) -> None:
        super().__init__()
        self.comparison = comparison

    def compose(self) -> ComposeResult:
        yield TopBar()
        yield Static(id="compare-head")
        with Horizontal(id="compare-body"):
            with VerticalScroll(id="compare-config", classes="pane") as config:
                config.border_title = "Configuration"
                yield Static(id="compare-config-text")
            with VerticalScroll(id="compare-results", classes="pane") as results:
                results.border_title = "Results"
                yield Static(id="compare-results-text")
        with VerticalScroll(id="compare-diff", classes="pane") as diff:
            diff.border_title = "Prompt diff"
            yield Static(id="compare-diff-text")
        yield LoomFooter()

    def crumbs(self) -> list[str]:
        return ["compare"]

    def on_mount(self) -> None:
        super().on_mount()
        self._draw()
        self.query_one("#compare-config").focus()

    def restyle(self) -> None:
        super().restyle()
        self._draw()

    def _draw(self) -> None:
        c = self.comparison
        colors = self.app.theme_variables
        head = Text()
        for label, run in (("A", c.run_a), ("B", c.run_b)):
            color = colors.get(fmt.STATUS_COLOR.get(run.status, ""), "")
            head.append(f" {label} ", f"bold reverse {colors.get('primary', '')}")
            head.append(f" {run.run_id} ", "bold")
            head.append(run.status, color)
            head.append(f" · {fmt.when(run.started_at)}    ", "dim")
        self.query_one("#compare-head", Static).update(head)
        self.query_one("#compare-config-text", Static).update(self._table(c.config))
        results = self._table(c.results)
        if c.evaluators:
            results.add_row("", "", "", "")
            results.add_row(Text("pass rate", style="bold"), "", "", "")
            for row in c.evaluators:
                self._row(results, row, indent=True)
        self.query_one("#compare-results-text", Static).update(results)
        self.query_one("#compare-diff-text", Static).update(self._diff())

    def _table(self, rows: tuple[ComparedValue, ...]) -> Table:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(style="dim", no_wrap=True)
        table.add_column(no_wrap=True, width=1)
        table.add_column(overflow="fold", ratio=1)
        table.add_column(overflow="fold", ratio=1)
        table.add_row("", "", Text("A", style="bold"), Text("B", style="bold"))
        for row in rows:
            self._row(table, row)
        return table

    def _row(self, table: Table, row: ComparedValue, *, indent: bool = False) -> None:
        colors = self.app.theme_variables
        accent = colors.get("accent", "")
        mark = Text("≠", style=f"bold {accent}") if row.differs else Text("")
        style = f"bold {accent}" if row.differs else ""
        label = f"  {row.label}" if indent else row.label
        table.add_row(label, mark, Text(_show(row.a, row.kind), style=style),
                      Text(_show(row.b, row.kind), style=style))

    def _diff(self) -> Text:
        c = self.comparison
        colors = self.app.theme_variables
        if c.run_a.prompt_hash == c.run_b.prompt_hash:
            return Text("Both runs used the same prompt.", style="dim")
        if not c.prompt_diff:
            return Text("The prompts differ, but the store does not hold both texts.", style="dim")
        text = Text()
        for line in c.prompt_diff:
            if line.startswith("+") and not line.startswith("+++"):
                style = colors.get("success", "")
            elif line.startswith("-") and not line.startswith("---"):
                style = colors.get("error", "")
            elif line.startswith("@@"):
                style = colors.get("secondary", "")
            else:
                style = "dim"
            text.append(line + "\n", style)
        return text

    def action_back(self) -> None:
        self.dismiss()


def _show(value: Any, kind: str) -> str:
    if value is None:
        return "(default)" if kind == "text" else "–"
    if kind == "money":
        return fmt.money(value)
    if kind == "seconds":
        return fmt.latency(value)
    if kind == "percent":
        return fmt.percent(value)
    if kind == "count":
        return fmt.count(value)
    if kind == "hash":
        return fmt.short_hash(value)
    return str(value)
