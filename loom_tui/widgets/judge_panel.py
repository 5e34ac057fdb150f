"""A pipeline's LLM judges against the people who reviewed their records: for each judge, how
often a person's decision (approve, edit, discard) agreed with its verdict, and which way it
errs — at a glance, whether its scores can be trusted to quarantine on their own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Group, RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from core.api import JudgeAgreement

# Below this many decisions a rate says little (3 of 3 is not "always right"): the judge is
# shown as not measured yet, whatever its rate.
MIN_DECISIONS = 10
TRUSTED = 0.9  # agrees with people at least this often: its verdicts can stand on their own
DOUBTFUL = 0.75  # below this a person overrules it too often to rely on it
BAR = 14


def verdict(agreement: JudgeAgreement) -> tuple[str, str]:
    """(what to make of the judge, the theme colour that says it)."""
    rate = agreement.rate
    if rate is None or agreement.decisions < MIN_DECISIONS:
        return f"· too few decisions to tell (<{MIN_DECISIONS})", "dim"
    if rate >= TRUSTED:
        return "✓ agrees with reviewers", "success"
    leaning = _leaning(agreement)
    if rate >= DOUBTFUL:
        return f"~ mostly agrees; {leaning}", "warning"
    return f"✗ often overruled; {leaning}", "error"


def _leaning(agreement: JudgeAgreement) -> str:
    if agreement.too_strict > agreement.too_lenient:
        return "too strict"
    if agreement.too_lenient > agreement.too_strict:
        return "too lenient"
    return "errs both ways"


class JudgePanel(VerticalScroll):
    DEFAULT_CSS = """
    JudgePanel {
        height: 1fr;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.pipeline: str | None = None
        self.agreements: list[JudgeAgreement] = []

    def compose(self) -> ComposeResult:
        yield Static(Text("Pick a run to see its pipeline's judges.", style="dim"),
                     id="judges-text")

    def show(self, pipeline: str, agreements: Sequence[JudgeAgreement]) -> None:
        self.pipeline, self.agreements = pipeline, list(agreements)
        self.redraw()

    def redraw(self) -> None:
        if self.pipeline is None:
            return
        colors = self.app.theme_variables
        body = self.query_one("#judges-text", Static)
        if not self.agreements:
            body.update(Text(
                f"No reviewed decisions for {self.pipeline}'s LLM judges yet. Approving, "
                "editing or discarding its quarantined records measures each judge against "
                "the reviewer.", style="dim"))
            return
        parts: list[RenderableType] = []
        for n, agreement in enumerate(self.agreements):
            if n:
                parts.append(Text(""))
            parts.extend(judge_lines(agreement, colors))
        body.update(Group(*parts))


def judge_lines(agreement: JudgeAgreement, colors: Mapping[str, str]) -> list[Text]:
    said, tone = verdict(agreement)
    color = "" if tone == "dim" else colors.get(tone, "")
    rate = agreement.rate or 0.0
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(agreement.evaluator, "bold")
    head.append(f"  {agreement.evaluator_type}", "dim")
    bar = Text(no_wrap=True, overflow="ellipsis")
    filled = round(rate * BAR)
    bar.append("━" * filled, color)
    bar.append("─" * (BAR - filled), "dim")
    bar.append(f" {rate:.0%}", f"bold {color}" if color else "bold")
    bar.append(f"  {agreement.agreed} of {agreement.decisions} agreed", "dim")
    counts = Text(no_wrap=True, overflow="ellipsis")
    counts.append(f"{agreement.too_strict} too strict · {agreement.too_lenient} too lenient",
                  "dim")
    return [head, bar, Text(said, style=color or "dim", no_wrap=True, overflow="ellipsis"),
            counts]
