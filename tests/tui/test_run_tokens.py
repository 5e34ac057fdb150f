"""The Run screen shows provider prompt-cache tokens and what caching saved."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from textual.widgets import Static

from loom_tui.app import LoomApp
from loom_tui.screens.run import RunScreen
from tests.pipelines import reply, write_pipeline
from tests.tui.conftest import SIZE, wait_for


def text_of(widget: Static) -> str:
    console = Console(width=160, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(widget.content)
    return " ".join(console.export_text().split())


async def test_the_run_screen_shows_cache_reads_and_the_saving(tmp_path: Path, llm_server) -> None:
    llm_server.cached_tokens = 10
    rows = [{"id": f"r{i}", "text": f"review {i} " + "words " * 40, "expected": "positive",
             "reply": reply("positive")} for i in range(5)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.start_run(path)
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the run screen")
        screen: RunScreen = app.screen  # type: ignore[assignment]
        await wait_for(pilot, lambda: screen.summary is not None, what="the summary", timeout=60)
        await pilot.pause()
        assert screen.summary.cache_read_tokens == 50
        metrics = text_of(screen.query_one("#run-metrics-text", Static))
        assert "(50 cache read)" in metrics and "saved by prompt caching" in metrics
        summary = text_of(screen.query_one("#run-summary-text", Static))
        assert "(50 cache read)" in summary and "saved by prompt caching" in summary
