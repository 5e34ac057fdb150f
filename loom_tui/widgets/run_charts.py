"""A pipeline's cost and latency across its recent runs, as two plotext charts."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static
from textual_plotext import PlotextPlot

from core.api import RunPoint
from loom_tui import format as fmt


class RunCharts(Horizontal):
    DEFAULT_CSS = """
    RunCharts {
        height: 1fr;
    }
    RunCharts PlotextPlot {
        width: 1fr;
        height: 1fr;
    }
    RunCharts #charts-empty {
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        color: $text-muted;
    }
    """

    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="cost-chart")
        yield PlotextPlot(id="latency-chart")
        yield Static("Pick a run to chart its pipeline.", id="charts-empty")

    def on_mount(self) -> None:
        self._show_plots(False)

    def _show_plots(self, shown: bool) -> None:
        for plot in self.query(PlotextPlot):
            plot.display = shown
        self.query_one("#charts-empty").display = not shown

    def show(self, pipeline: str, points: Sequence[RunPoint]) -> None:
        if not points:
            self.query_one("#charts-empty", Static).update(
                f"{pipeline} has no finished runs to chart yet.")
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
        plt.title(f"cost per run, USD · last {len(points)}")
        plt.xticks(*labels)
        plt.yfrequency(4)
        cost.refresh()

        latency = self.query_one("#latency-chart", PlotextPlot)
        plt = latency.plt
        plt.clear_figure()
        for label, values in (("p50", [p.latency_p50_s for p in points]),
                              ("p95", [p.latency_p95_s for p in points])):
            pairs = [(x, v * 1000) for x, v in zip(xs, values) if v is not None]
            if pairs:
                plt.plot([x for x, _ in pairs], [v for _, v in pairs], label=label,
                         marker="braille")
        plt.title("latency per run, ms")
        plt.xticks(*labels)
        plt.yfrequency(4)
        latency.refresh()


def _labels(points: Sequence[RunPoint]) -> tuple[list[int], list[str]]:
    """Two x ticks, labelled with the first and the last run's start: three would not fit a
    narrow chart, and plotext would drop one or another depending on the width."""
    count = len(points)
    picks = sorted({1, count})
    return picks, [fmt.when(points[i - 1].started_at)[5:] for i in picks]
