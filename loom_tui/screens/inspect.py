"""One record, whole (Enter on a record in the workbench): every input field in full, the
prompt rendered for it, the model's raw answer, the parsed output, every score with its
explanation and details, the gate's verdict, tokens, cost and latency.

The result comes from the workbench's sample when the record is in it; otherwise it is run
here, in a worker, exactly as the sample runs (cached answers at once, nothing loaded).
n / p step to the next and previous record of the list, as the records pane would.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.markup import escape
from rich.console import Group, RenderableType
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Static

from core.api import LoadedSpec, RenderResult
from core.records import Outcome, Record, RecordResult
from loom_tui import format as fmt
from loom_tui.screens.base import LoomScreen
from loom_tui.widgets.footer import LoomFooter
from loom_tui.widgets.record_view import (heading, input_fields, output_json, raw_answer,
                                          rendered_messages)
from loom_tui.widgets.score_view import scores_table
from loom_tui.widgets.top_bar import TopBar

# Given a step (+1, -1) from the record shown: the record there and its sample result, if known.
Stepper = Callable[[Record, int], tuple[Record, RecordResult | None] | None]


class RecordInspected(Message):
    def __init__(self, record: Record, rendered: RenderResult | None,
                 result: RecordResult | None) -> None:
        self.record, self.rendered, self.result = record, rendered, result
        super().__init__()


class RecordInspector(LoomScreen):
    SECTION = "pipelines"
    TITLE = "Record"
    HELP = ("One record, whole: every field of its input, the prompt rendered for it, the "
            "model's raw answer, the parsed output, every evaluator's score with its "
            "explanation, the gate's verdict and what it cost. It uses the prompt in the "
            "editor, saved or not. n and p step to the next and the previous record.")
    BINDINGS = [
        Binding("escape,q", "back", "Back", tooltip="Back to the workbench", id="inspect.back"),
        Binding("n", "step(1)", "Next", tooltip="The next record", id="inspect.next"),
        Binding("p", "step(-1)", "Previous", tooltip="The previous record", id="inspect.previous"),
    ]

    def __init__(self, loaded: LoadedSpec, prompt_text: str, record: Record,
                 result: RecordResult | None, step: Stepper | None = None) -> None:
        super().__init__()
        self.loaded = loaded
        self.prompt_text = prompt_text
        self.record = record
        self.result = result
        self.rendered: RenderResult | None = None
        self.stepper = step

    def compose(self) -> ComposeResult:
        yield TopBar()
        with VerticalScroll(id="inspect-body", classes="pane") as body:
            body.border_title = "Record"
            yield Static(id="inspect-text")
        yield LoomFooter()

    def crumbs(self) -> list[str]:
        return [self.loaded.spec.name, self.record.id]

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#inspect-body").focus()
        self._show()

    def _show(self) -> None:
        self.refresh_top_bar()
        self.query_one("#inspect-body").border_title = f"Record {escape(self.record.id)}"
        self.query_one("#inspect-text", Static).update(self._describe())
        self.inspect(self.record, self.result)

    @work(exclusive=True, group="inspect", exit_on_error=False)
    async def inspect(self, record: Record, result: RecordResult | None) -> None:
        import asyncio

        workspace = self.workspace
        rendered = await asyncio.to_thread(workspace.render, self.loaded, record, self.prompt_text)
        if result is None:
            results = await workspace.run_sample(self.loaded, [record],
                                                 prompt_text=self.prompt_text)
            result = results[0] if results else None
        self.post_message(RecordInspected(record, rendered, result))

    @on(RecordInspected)
    def _inspected(self, event: RecordInspected) -> None:
        if event.record.ordinal != self.record.ordinal:
            return
        self.rendered, self.result = event.rendered, event.result
        self.query_one("#inspect-text", Static).update(self._describe())

    def work_failed(self, group: str, message: str) -> None:
        if group == "inspect":
            self.query_one("#inspect-text", Static).update(Group(
                self._describe(), Text(f"\ncould not run it: {message}",
                                       style=self.app.theme_variables.get("error", ""))))
            return
        super().work_failed(group, message)

    def restyle(self) -> None:
        super().restyle()
        self.query_one("#inspect-text", Static).update(self._describe())

    # ------------------------------------------------------------------ drawing

    def _describe(self) -> Group:
        colors = self.app.theme_variables
        dark = self.app.current_theme.dark
        parts: list[RenderableType] = []
        result = self.result
        if result is not None:
            ok = result.outcome is Outcome.LOADED
            head = Text.assemble(
                (self.record.id, "bold"), "  ",
                ("✓ pass" if ok else f"✗ {result.outcome}",
                 f"bold {colors.get('success' if ok else 'error', '')}"))
            if result.verdict is not None:
                verdict = result.verdict
                threshold = f" / {verdict.threshold:.2f}" if verdict.threshold is not None else ""
                head.append(f"  {verdict.gate} {verdict.value:.2f}{threshold}", "dim")
            parts.append(head)
            if not ok and result.reason:
                stage = f"{result.stage}: " if result.stage else ""
                parts.append(Text(f"{stage}{result.reason}", style=colors.get("error", "")))
            parts.append(_costs(result))
        else:
            parts.append(Text.assemble((self.record.id, "bold"),
                                       ("  running it through the prompt…", "dim")))
        parts += [heading("input", colors), input_fields(self.record.data)]
        parts.append(heading("rendered prompt", colors))
        rendered = self.rendered
        if rendered is None:
            parts.append(Text("…", style="dim"))
        elif rendered.messages is None:
            parts.append(Text(rendered.error or "the template failed",
                              style=colors.get("error", "")))
        else:
            parts += rendered_messages(rendered.messages)
        if result is not None:
            transform = result.transform
            parts.append(heading("raw answer", colors))
            parts.append(raw_answer(transform.raw_text if transform is not None else None))
            parts.append(heading("output", colors))
            parts.append(output_json(result.output, dark))
            parts.append(heading("scores", colors))
            if result.scores:
                parts.append(scores_table([score.to_dict() for score in result.scores], colors))
            else:
                parts.append(Text("none: no evaluator ran", style="dim"))
        return Group(*parts)

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        self.dismiss()

    def action_step(self, delta: int) -> None:
        if self.stepper is None:
            return
        there = self.stepper(self.record, delta)
        if there is None:
            self.notify("No record there.", timeout=2)
            return
        self.record, self.result = there
        self.rendered = None
        self.query_one("#inspect-body", VerticalScroll).scroll_home(animate=False)
        self._show()


def _costs(result: RecordResult) -> Text:
    calls = result.calls
    if not calls:
        return Text("no model call", style="dim")
    tokens_in = sum(c.input_tokens for c in calls)
    tokens_out = sum(c.output_tokens for c in calls)
    cost = fmt.money(_sum([c.cost_usd for c in calls]))
    cached = sum(1 for c in calls if c.cached)
    latency = fmt.latency(sum(c.latency_s for c in calls if not c.cached))
    return Text(f"{fmt.plural(len(calls), 'call')} ({cached} cached) · {tokens_in:,}→"
                f"{tokens_out:,} tokens · {cost} · {latency}", style="dim")


def _sum(costs: list[float | None]) -> float | None:
    return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)
