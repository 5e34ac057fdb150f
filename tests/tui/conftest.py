"""Fixtures for the workbench's tests: a fixed timezone, folders with real pipelines, and
helpers that wait for the app's workers instead of sleeping."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_pipelines" / "customer_sentiment"
SIZE = (120, 36)


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Times on screen are local: make local UTC so snapshots do not depend on the machine."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture(autouse=True)
def lasting_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests read the toasts the app showed (`app._notifications`); a toast expires after five
    seconds, which a loaded machine can spend between the action and the check."""
    from loom_tui.app import LoomApp

    monkeypatch.setattr(LoomApp, "NOTIFICATION_TIMEOUT", 600)


def copy_sample(folder: Path) -> Path:
    """The repository's sample pipeline, copied (a run writes its output next to it)."""
    target = folder / "customer_sentiment"
    shutil.copytree(SAMPLE, target, ignore=shutil.ignore_patterns("out"))
    return target / "pipeline.yaml"


def write_invalid(folder: Path) -> Path:
    """A pipeline with a typo'd key: listed with its one-line error."""
    path = folder / "broken" / "pipeline.yaml"
    path.parent.mkdir(parents=True)
    text = (SAMPLE / "pipeline.yaml").read_text().replace("  prompt: prompts/classify.j2",
                                                         "  promt: prompts/classify.j2")
    path.write_text(text.replace("name: customer_sentiment", "name: broken_pipeline"))
    return path


async def wait_for(pilot, condition: Callable[[], bool], *, what: str = "condition",
                   timeout: float = 20.0) -> None:
    """Let the app work (workers, messages, timers) until `condition` holds. The timeout is
    only a guard against a hang, never part of what a test asserts."""
    deadline = asyncio.get_running_loop().time() + timeout
    await pilot.pause()
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def settle(pilot) -> None:
    """Until no worker runs and no timer is about to fire a new one."""
    app = pilot.app
    for _ in range(6):
        await app.workers.wait_for_complete()
        await pilot.pause(0.05)
    await app.workers.wait_for_complete()
    await pilot.pause()


def text_of(widget, width: int = 100) -> str:
    """What a Static shows, as plain text (its Rich content rendered at `width` columns)."""
    from rich.console import Console

    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    console.print(widget.content)
    return console.export_text()
