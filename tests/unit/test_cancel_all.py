"""The pump's last line of defence when a run stops: every stage ends, even one whose cancel
was swallowed (as Python 3.11's wait_for did when a cancel met a result)."""

from __future__ import annotations

import asyncio

import core.engine as engine


async def test_a_stage_that_swallows_its_cancel_is_cancelled_again(monkeypatch):
    monkeypatch.setattr(engine, "CANCEL_PATIENCE_S", 0.05)
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # ignores it, and waits on as if nothing happened
        await asyncio.sleep(60)

    async def failed() -> None:
        raise RuntimeError("this stage failed first")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failed()),
             asyncio.create_task(asyncio.sleep(60))]
    await asyncio.sleep(0)
    await asyncio.wait_for(engine._cancel_all(tasks), timeout=5)
    assert swallowed.is_set()
    assert all(task.done() for task in tasks)
    assert tasks[0].cancelled() and tasks[2].cancelled()
    assert isinstance(tasks[1].exception(), RuntimeError)
