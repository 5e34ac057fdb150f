"""The workbench's Output pane: for each sample record, the transform's output, every
evaluator's score and explanation, the gate's verdict, tokens, cost and latency — and after a
save, which records changed verdict against the previous prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Group, RenderableType
from rich.rule import Rule
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.api import PromptComparison
from core.records import Outcome, RecordResult, sum_costs
from loom_tui import format as fmt
from loom_tui.widgets.score_view import scores_table


# A record the cassette had no answer for: the pane says so in these words (and what would
# answer, above the cards), not the engine's line, which speaks of --record to the CLI.
MISSED = "no recorded answer for this prompt"


def _missed(result: RecordResult) -> bool:
    return result.error_type == "CassetteMiss"


class SampleOutput(VerticalScroll):
    DEFAULT_CSS = """
    SampleOutput {
        height: 1fr;
        padding: 0 1;
    }
    SampleOutput #sample-status {
        height: auto;
        margin-bottom: 1;
    }
    SampleOutput.-busy #sample-results {
        opacity: 50%;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.results: list[RecordResult] = []  # what the pane shows now
        self.prompt_text: str | None = None  # the prompt the results answer
        self.comparison: PromptComparison | None = None
        self.note: str | None = None
        self.busy = False
        self.unsaved = False  # the comparison is an unsaved edit against the saved prompt
        # What would answer a prompt the cassette has no answer for, in the screen's words
        # (it knows the keys): shown above the cards when a record missed.
        self.miss_hint: Text | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="sample-status")
        yield Static(id="sample-results")

    def on_mount(self) -> None:
        self.show_note("The output appears here once the records load.")

    @property
    def _colors(self) -> Mapping[str, str]:
        return self.app.theme_variables

    def show_note(self, text: str, *, error: bool = False) -> None:
        self.note, self.busy = text, False
        self.remove_class("-busy")
        style = f"bold {self._colors.get('error', '')}" if error else "dim"
        self.query_one("#sample-status", Static).update(Text(text, style=style))

    def show_busy(self, count: int) -> None:
        self.busy = True
        self.add_class("-busy")
        self.query_one("#sample-status", Static).update(Text(
            f"◌ transforming and judging {fmt.plural(count, 'record')}…",
            style=f"bold {self._colors.get('accent', '')}"))

    def show_results(self, results: Sequence[RecordResult],
                     comparison: PromptComparison | None = None, *,
                     unsaved: bool = False) -> None:
        self.results, self.comparison, self.note, self.busy = list(results), comparison, None, False
        self.unsaved = unsaved and comparison is not None
        self.remove_class("-busy")
        colors = self._colors
        passed = sum(1 for r in results if r.outcome is Outcome.LOADED)
        calls = [call for r in results for call in r.calls]
        cost = sum_costs([call.cost_usd for call in calls])
        tokens = sum(call.input_tokens + call.output_tokens for call in calls)
        cached = sum(1 for r in results if r.transform is not None and r.transform.cached)
        status = Text.assemble(
            (f"{fmt.plural(len(results), 'record')}", "bold"), " · ",
            (f"{passed} pass", colors.get("success", "")), " · ",
            (f"{len(results) - passed} fail", colors.get("error", "") if passed < len(results) else "dim"),
            f" · {fmt.money(cost)} · {tokens:,} tokens",
            (f" · {cached} cached" if cached else "", "dim"))
        parts: list[RenderableType] = [status]
        missed = sum(1 for r in results if _missed(r))
        if missed and self.miss_hint is not None:
            parts.append(Text(""))
            parts.append(self.miss_hint)
        changes = {}
        # Every record missed: "5 of 5 changed verdict" would only repeat the hint above.
        if comparison is not None and missed < len(results):
            parts.append(self._comparison(comparison))
            changes = {row.record_id: row for row in comparison.rows}
        self.query_one("#sample-status", Static).update(Group(*parts))
        cards: list[RenderableType] = []
        for n, result in enumerate(results):
            if n:
                cards.append(Rule(style="dim"))
            cards.append(self._card(result, changes.get(result.record.id)))
        self.query_one("#sample-results", Static).update(Group(*cards))

    def _comparison(self, comparison: PromptComparison) -> RenderableType:
        colors = self._colors
        changed = comparison.changed
        if self.unsaved:
            head = Text.assemble(("your edit", "bold"), " against the saved prompt: ")
        else:
            head = Text.assemble(
                ("saved ", "bold"), (fmt.short_hash(comparison.after_hash), "bold"),
                f" (was {fmt.short_hash(comparison.before_hash)}): ")
        if not changed:
            head.append(f"no record changed verdict ({len(comparison.rows)} compared)", "dim")
            head.append(" · d: outputs side by side", "dim")
            return head
        head.append(f"{len(changed)} of {len(comparison.rows)} changed verdict", "bold")
        head.append(" · d: side by side", "dim")
        lines = [head]
        after = {r.record.id: r for r in comparison.after_results}
        for row in changed:
            good = row.after and not row.before
            result = after.get(row.record_id)
            reason = MISSED if result is not None and _missed(result) else \
                (row.after_reason or row.before_reason or "")
            line = Text.assemble(
                "  ", (row.record_id, "bold"), "  ",
                (row.label, colors.get("success" if good else "error", "")),
                (f"  {fmt.one_line(reason)}", "dim"))
            line.no_wrap, line.overflow = True, "ellipsis"
            lines.append(line)
        return Group(*lines)

    def _card(self, result: RecordResult, change: object | None) -> RenderableType:
        colors = self._colors
        ok = result.outcome is Outcome.LOADED
        title = Text.assemble(
            (result.record.id, "bold"), "  ",
            ("✓ pass" if ok else "✗ fail", f"bold {colors.get('success' if ok else 'error', '')}"))
        if change is not None and getattr(change, "changed", False):
            title.append(f"  was {'pass' if change.before else 'fail'}",  # type: ignore[attr-defined]
                         f"italic {colors.get('warning', '')}")
        if result.verdict is not None:
            verdict = result.verdict
            threshold = f"/{verdict.threshold:.2f}" if verdict.threshold is not None else ""
            title.append(f"  {verdict.gate} {verdict.value:.2f}{threshold}", "dim")
        parts: list[RenderableType] = [title, self._costs(result)]
        if not ok and result.reason:
            stage = f"{result.stage}: " if result.stage else ""
            said = MISSED if _missed(result) else result.reason
            reason = Text(f"{stage}{said}", style=colors.get("error", ""))
            if result.scores:
                # The gate's reason repeats the scores' explanations, listed below: one line.
                reason.no_wrap, reason.overflow = True, "ellipsis"
            parts.append(reason)
        if result.output is not None:
            parts.append(Text(fmt.compact_json(result.output), style=colors.get("secondary", "")))
        elif result.transform is not None and result.transform.raw_text:
            parts.append(Text(f"raw answer: {result.transform.raw_text}", style="dim"))
        if result.scores:
            parts.append(scores_table([score.to_dict() for score in result.scores], colors))
        return Group(*parts)

    def _costs(self, result: RecordResult) -> Text:
        calls = result.calls
        if not calls:
            return Text("no model call", style="dim")
        tokens_in = sum(c.input_tokens for c in calls)
        tokens_out = sum(c.output_tokens for c in calls)
        cost = sum_costs([c.cost_usd for c in calls])
        transform = result.transform
        if transform is not None and transform.cached:
            speed = "cached"
        elif all(c.provider == "replay" for c in calls):
            speed = "replayed"  # from a cassette: its timing says nothing about a model
        else:
            speed = fmt.latency(sum(c.latency_s for c in calls if not c.cached))
        return Text(f"{tokens_in:,}→{tokens_out:,} tok · {fmt.money(cost)} · {speed}", style="dim")
