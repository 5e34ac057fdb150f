"""One quarantined record, whole: why it stopped, its input and output, every score and
explanation, the gate's verdict, and every action taken on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.api import QuarantineAction, QuarantinedRecord
from loom_tui import format as fmt
from loom_tui.widgets.record_view import heading as _heading
from loom_tui.widgets.record_view import input_fields, output_json, raw_answer, rendered_messages
from loom_tui.widgets.score_view import scores_table


class QuarantineDetail(VerticalScroll):
    DEFAULT_CSS = """
    QuarantineDetail {
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.row: QuarantinedRecord | None = None  # what the pane shows now
        self.actions: list[QuarantineAction] | None = None

    def compose(self):
        yield Static(Text("Pick a record.", style="dim"), id="detail-text")

    def show(self, row: QuarantinedRecord | None,
             actions: Sequence[QuarantineAction] | None = None) -> None:
        self.row, self.actions = row, None if actions is None else list(actions)
        body = self.query_one("#detail-text", Static)
        if row is None:
            body.update(Text("Nothing to show: the quarantine is empty for these filters.",
                             style="dim"))
            return
        body.update(self._describe(row, actions))

    def _describe(self, row: QuarantinedRecord, actions: Sequence[QuarantineAction] | None) -> Group:
        colors = self.app.theme_variables
        dark = self.app.current_theme.dark
        status_color = colors.get(fmt.STATUS_COLOR.get(row.status, ""), "")
        title = Text.assemble((f"#{row.id} ", "bold"), (row.record_id, "bold"), "  ",
                              (row.status, f"bold {status_color}"))
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="dim", no_wrap=True)
        facts.add_column()
        facts.add_row("pipeline", Text(row.pipeline_name))  # data: Text, never markup
        facts.add_row("run", Text(row.run_id))
        facts.add_row("stage", Text(row.stage, style="bold"))
        facts.add_row("reason", Text(row.reason or "–", style=colors.get("error", "")))
        if row.resolution_note:
            facts.add_row("note", Text(row.resolution_note))
        parts: list[RenderableType] = [title, facts]
        # The record as the workbench's inspector draws it (widgets/record_view.py): every
        # input field, the prompt it was sent, the model's raw answer, the parsed output.
        parts += [_heading("input", colors), input_fields(row.input)]
        parts.append(_heading("rendered prompt", colors))
        parts += rendered_messages(row.messages, missing="not kept for this record (it "
                                   "stopped before a prompt was rendered)")
        parts += [_heading("raw answer", colors), raw_answer(row.raw_output)]
        parts.append(_heading("output", colors))
        if row.output is not None:
            parts.append(_json(row.output, dark))
        else:
            parts.append(Text("no valid output" + (" (the raw answer is above)"
                                                   if row.raw_output else ""), style="dim"))
        if row.final_output is not None:
            parts += [_heading("loaded output", colors), _json(row.final_output, dark)]
        if row.scores:
            parts += [_heading("scores", colors), scores_table(row.scores, colors)]
        if row.verdict:
            parts += [_heading("verdict", colors), _verdict(row.verdict, colors)]
        parts.append(_heading("actions", colors))
        if actions is None:
            parts.append(Text("…", style="dim"))
        elif not actions:
            parts.append(Text("none yet: a approve · e edit then approve · r reprocess · "
                              "d discard", style="dim"))
        else:
            parts.append(_actions(actions))
        return Group(*parts)


def _json(value: Any, dark: bool) -> RenderableType:
    return output_json(value, dark)


def _verdict(verdict: Mapping[str, Any], colors: Mapping[str, str]) -> Text:
    passed = bool(verdict.get("passed"))
    text = Text("✓ passed" if passed else "✗ rejected",
                style=f"bold {colors.get('success' if passed else 'error', '')}")
    value, threshold = verdict.get("value"), verdict.get("threshold")
    text.append(f"  {verdict.get('gate', '?')}")
    if isinstance(value, (int, float)):
        text.append(f" {value:.2f}")
    if isinstance(threshold, (int, float)):
        text.append(f" / {threshold:.2f}")
    if verdict.get("reason"):
        text.append(f"\n{verdict['reason']}", "dim")
    return text


def _actions(actions: Sequence[QuarantineAction]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for action in actions:
        details = dict(action.details or {})
        said = []
        moved = f"{details.pop('from', '?')} → {details.pop('to', '?')}"
        said.append(moved)
        for key in ("destination", "reason", "note"):
            if details.get(key):
                said.append(f"{key}: {details[key]}")
        if details.get("cost_usd") is not None:
            said.append(f"cost {fmt.money(details['cost_usd'])}")
        by = f" by {action.actor}" if action.actor else ""
        grid.add_row(fmt.when(action.at), Text(f"{action.action}{by}"), Text(" · ".join(said)))
    return grid
