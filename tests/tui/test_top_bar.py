"""The top bar at the sizes people use: a narrow terminal shortens the crumbs in their middle,
so the model's "(preview)" mark and the section keys stay in view."""

from __future__ import annotations

from loom_tui.app import LoomApp
from loom_tui.widgets.top_bar import TopBar, fitted
from tests.tui.conftest import text_of

CRUMBS = ["customer_sentiment", "openai_compatible/local-model (preview)"]


def test_the_longest_crumb_is_shortened_in_its_middle() -> None:
    assert fitted(list(CRUMBS), 200) == CRUMBS
    short = fitted(list(CRUMBS), 50)
    assert sum(len(c) + 3 for c in short) <= 50
    assert short[0] == "customer_sentiment" and short[1].endswith("(preview)") and "…" in short[1]


async def test_an_80_column_bar_keeps_the_preview_mark_and_every_section_key(tmp_path) -> None:
    app = LoomApp(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.screen.query_one(TopBar)
        bar.show("pipelines", CRUMBS)
        await pilot.pause()
        shown = text_of(bar, 80).rstrip()
        assert len(shown) <= 78
        assert "(preview)" in shown, shown
        assert shown.startswith("Loom › customer_sentiment › "), shown
        assert shown.endswith("f2 Pipelines  f3  f4  f6"), shown
