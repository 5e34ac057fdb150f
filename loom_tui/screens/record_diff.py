"""The prompt A/B per record, side by side: for each sample record, its output and verdict
under the previous prompt version (A) and under the one just saved (B), the records whose
verdict or output changed first. n / p jump between the changed ones.

It reads the comparison the workbench made on ctrl+s (core.api.Workspace.compare_prompts):
nothing is run here."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from core.api import PromptComparison
from core.records import Outcome, RecordResult
from loom_tui import format as fmt
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.paged_table import Column, PagedTable, Row, Tone
from loom_tui.widgets.score_view import scores_table
from loom_tui.widgets.top_bar import TopBar

COLUMNS = (Column("record", 10), Column("verdict", 11), Column("output", None, min_width=8))


class DiffRow:
    """One record under both versions."""

    def __init__(self, record_id: str, before: RecordResult | None,
                 after: RecordResult | None) -> None:
        self.record_id, self.before, self.after = record_id, before, after

    @property
    def verdict_changed(self) -> bool:
        return _passed(self.before) != _passed(self.after)

    @property
    def output_changed(self) -> bool:
        return _output(self.before) != _output(self.after)

    @property
    def changed(self) -> bool:
        return self.verdict_changed or self.output_changed


def diff_rows(comparison: PromptComparison) -> list[DiffRow]:
    """Every sample record, the changed ones first (in sample order within each group)."""
    before = {r.record.id: r for r in comparison.before_results}
    after = {r.record.id: r for r in comparison.after_results}
    ids = list(dict.fromkeys([*before, *after]))
    rows = [DiffRow(i, before.get(i), after.get(i)) for i in ids]
    return [r for r in rows if r.changed] + [r for r in rows if not r.changed]


class RecordDiffScreen(LoomScreen):
    SECTION = "pipelines"
    TITLE = "Prompt A/B per record"
    HELP = ("The sample records judged under the previous prompt version (A) and the one just "
            "saved (B), or before a save the saved prompt (A) and your edit (B): the records "
            "whose verdict or output changed come first. On the right, "
            "the highlighted record's output, verdict and scores under each version, side by "
            "side. n and p jump to the next and the previous changed record.")
    BINDINGS = [
        Binding("escape,q", "back", "Back", tooltip="Back to the workbench", id="diff.back"),
        Binding("n", "jump(1)", "Next change", tooltip="The next record that changed",
                id="diff.next"),
        Binding("p", "jump(-1)", "Previous change", tooltip="The previous record that changed",
                id="diff.previous"),
    ]

    def __init__(self, comparison: PromptComparison, pipeline: str, *,
                 labels: tuple[str, str] = ("before", "saved now")) -> None:
        super().__init__()
        self.comparison = comparison
        self.labels = labels  # what A and B are: (before, saved now) or (saved, your edit)
        self.pipeline = pipeline
        self.rows = diff_rows(comparison)

    def compose(self) -> ComposeResult:
        yield TopBar()
        with Horizontal(id="diff-body"):
            with Vertical(id="diff-list-pane", classes="pane") as pane:
                changed = sum(1 for r in self.rows if r.changed)
                pane.border_title = f"Records · {changed} changed of {len(self.rows)}"
                yield PagedTable(COLUMNS, page_size=10_000, id="diff-table",
                                 empty="no sample records were compared")
            with VerticalScroll(id="diff-a", classes="pane") as a:
                a.border_title = f"A · {fmt.short_hash(self.comparison.before_hash)} ({self.labels[0]})"
                yield Static(id="diff-a-text")
            with VerticalScroll(id="diff-b", classes="pane") as b:
                b.border_title = f"B · {fmt.short_hash(self.comparison.after_hash)} ({self.labels[1]})"
                yield Static(id="diff-b-text")
        yield LoomFooter()

    def crumbs(self) -> list[str]:
        return [self.pipeline, "A/B per record"]

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one(PagedTable)
        table.focus()
        table.total = len(self.rows)
        table.show_page([Row(r.record_id, self._cells(r), r) for r in self.rows], "first",
                        table.generation)

    def _cells(self, row: DiffRow) -> tuple:
        verdict = f"{_word(row.before)}→{_word(row.after)}"
        tone = ("success" if _passed(row.after) else "error") if row.verdict_changed else "dim"
        output = Tone("changed", "warning") if row.output_changed else Tone("same", "dim")
        return (row.record_id, Tone(verdict, tone), output)

    @on(PagedTable.Highlighted, "#diff-table")
    def _highlighted(self, event: PagedTable.Highlighted) -> None:
        row: DiffRow | None = event.row.item if event.row is not None else None
        for side in ("a", "b"):
            result = None if row is None else (row.before if side == "a" else row.after)
            other = None if row is None else (row.after if side == "a" else row.before)
            self.query_one(f"#diff-{side}-text", Static).update(self._side(result, other))

    def _side(self, result: RecordResult | None, other: RecordResult | None) -> RenderableType:
        colors = self.app.theme_variables
        if result is None:
            return Text("not judged under this version", style="dim")
        ok = result.outcome is Outcome.LOADED
        head = Text.assemble((result.record.id, "bold"), "  ",
                             ("✓ pass" if ok else "✗ fail",
                              f"bold {colors.get('success' if ok else 'error', '')}"))
        parts: list[RenderableType] = [head]
        if not ok and result.reason:
            parts.append(Text(result.reason, style=colors.get("error", "")))
        parts.append(Text("\n── output ──", style=f"bold {colors.get('secondary', '')}"))
        if result.output is not None:
            changed = _output(other) != _output(result)
            parts.append(Text(fmt.pretty_json(result.output),
                              style=colors.get("warning" if changed else "secondary", "")))
        elif result.transform is not None and result.transform.raw_text:
            parts.append(Text(f"raw answer: {result.transform.raw_text}", style="dim"))
        else:
            parts.append(Text("no output", style="dim"))
        if result.scores:
            parts.append(Text("\n── scores ──", style=f"bold {colors.get('secondary', '')}"))
            parts.append(scores_table([s.to_dict() for s in result.scores], colors))
        return Group(*parts)

    def action_jump(self, step: int) -> None:
        table = self.query_one(PagedTable)
        changed = [i for i, r in enumerate(self.rows) if r.changed]
        if not changed:
            self.notify("No record changed between the two versions.", timeout=3)
            return
        here = table.cursor
        ahead = [i for i in changed if (i > here if step > 0 else i < here)]
        table.cursor = (ahead[0] if step > 0 else ahead[-1]) if ahead else \
            (changed[0] if step > 0 else changed[-1])

    def action_back(self) -> None:
        self.dismiss()


def _passed(result: RecordResult | None) -> bool | None:
    return None if result is None else result.outcome is Outcome.LOADED


def _output(result: RecordResult | None) -> object:
    if result is None:
        return None
    if result.output is not None:
        return result.output
    return result.transform.raw_text if result.transform is not None else None


def _word(result: RecordResult | None) -> str:
    passed = _passed(result)
    return "–" if passed is None else ("pass" if passed else "fail")
