"""A pipeline's cost and latency across its recent runs, as two plotext charts."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static
from textual_plotext import PlotextPlot

from core.api import RunPoint
from loom_tui import format as fmt


NARROW = 70  # columns under which one chart is drawn, not two
EMPTY = ("Charts of cost and p50/p95 latency per run appear here: highlight a run above and "
         "its pipeline's recent runs are drawn, oldest on the left.")


class RunCharts(Horizontal):
    DEFAULT_CSS = """
    RunCharts {
        height: 1fr;
        overflow: hidden hidden;
    }
    RunCharts PlotextPlot {
        width: 1fr;
        height: 1fr;
        overflow: hidden hidden;
        /* A column apart: frame against frame against the pane's border read as "|||". */
        margin-right: 1;
    }
    RunCharts #charts-empty {
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        text-align: center;
        color: $text-muted;
        padding: 0 2;
    }
    """

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="cost-chart")
        yield PlotextPlot(id="latency-chart")
        yield Static(EMPTY, id="charts-empty")

    def on_mount(self) -> None:
        self._show_plots(False)

    def _show_plots(self, shown: bool) -> None:
        self._shown = shown
        narrow = self.size.width < NARROW
        for plot in self.query(PlotextPlot):
            # Narrow: latency only (the runs list has each run's cost; its p95 is dropped).
            plot.display = shown and not (narrow and plot.id == "cost-chart")
        self.query_one("#charts-empty").display = not shown

    def on_resize(self) -> None:
        self._show_plots(getattr(self, "_shown", False))

    def show(self, pipeline: str, points: Sequence[RunPoint]) -> None:
        if not points:
            self.query_one("#charts-empty", Static).update(
                f"{pipeline} has no finished runs yet. Its cost and p50/p95 latency per run "
                "are charted here once it has some (Pipelines, r runs it).")
            self._show_plots(False)
            return
        self._show_plots(True)
        xs = list(range(1, len(points) + 1))
        labels = _labels(points)
        cost = self.query_one("#cost-chart", PlotextPlot)
        plt = cost.plt
        plt.clear_figure()
        known = [(x, p.cost_usd) for x, p in zip(xs, points) if p.cost_usd is not None]
        if known:
            # Many runs in a chart a third of the screen wide: thin bars, or they merge into
            # one block. (By count, not by the widget's size: that is not known yet here.)
            plt.bar([x for x, _ in known], [c for _, c in known],
                    width=0.6 if len(points) <= 8 else 0.3)
            plt.yticks(*_ticks([c for _, c in known], money_tick))
        plt.title(f"cost per run · last {len(points)}")
        plt.xticks(*labels)
        plt.xlim(0.5, len(points) + 0.5)
        cost.refresh()

        latency = self.query_one("#latency-chart", PlotextPlot)
        plt = latency.plt
        plt.clear_figure()
        drawn: list[float] = []
        # No legend on the lines (it hides them in a small chart): the title says which is which.
        for values, color in (([p.latency_p50_s for p in points], "cyan"),
                              ([p.latency_p95_s for p in points], "orange")):
            pairs = [(x, v) for x, v in zip(xs, values) if v is not None]
            if pairs:
                plt.plot([x for x, _ in pairs], [v for _, v in pairs], marker="braille",
                         color=color)
                drawn.extend(v for _, v in pairs)
        if drawn:
            # From 0: a p50 that looks far below the p95 is far below it.
            plt.ylim(0, max(drawn) * 1.05 or 1.0)
            plt.yticks(*_ticks(drawn, latency_tick))
        # Short, or plotext drops it in a narrow chart (and with it, which line is which).
        plt.title("latency · p50 cyan · p95 orange")
        plt.xticks(*labels)
        plt.xlim(0.5, len(points) + 0.5)
        latency.refresh()


def _ticks(values: Sequence[float], label: Callable[[float], str]) -> tuple[list[float], list[str]]:
    """Three y ticks, 0, half and the top, labelled for people: `$0.0021`, `350 ms`, `2.8 s`,
    never plotext's own `2819.2`."""
    top = max(values) if values else 0.0
    if top <= 0:
        return [0.0], [label(0.0)]
    ticks = [0.0, top / 2, top]
    return ticks, [label(t) for t in ticks]


def money_tick(value: float) -> str:
    if value == 0:
        return "$0"
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:.2f}"
    digits = max(2, -math.floor(math.log10(value)) + 1)  # two significant digits
    return f"${value:.{digits}f}"


def latency_tick(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 100:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _labels(points: Sequence[RunPoint]) -> tuple[list[int], list[str]]:
    """Two x ticks, labelled with the first and the last run's start: three would not fit a
    narrow chart, and plotext would drop one or another depending on the width."""
    count = len(points)
    picks = sorted({1, count})
    return picks, [fmt.when(points[i - 1].started_at)[5:] for i in picks]
