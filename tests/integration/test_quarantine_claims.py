"""Two actions on one record from one process at once (the workbench runs actions in workers):
one acts, the other says who holds the record; nothing loaded that the store calls discarded."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from core.api import Workspace
from tests.pipelines import read_jsonl, reply, write_pipeline


async def test_an_approve_and_a_discard_at_once_in_one_process(tmp_path: Path, llm_server):
    rows = [{"id": f"r{i}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 3 == 0 else "positive")} for i in range(6)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          load={"destination": "jsonl://out/results.jsonl", "mode": "append"})
    async with Workspace(tmp_path) as workspace:
        summary = await workspace.run_to_end(workspace.load(path))
        ids = [item.id for item in await workspace.quarantine(run_id=summary.run_id)]
        approved, discarded = await asyncio.gather(workspace.approve(ids),
                                                   workspace.discard(ids, note="junk"))
        for quarantine_id, a, d in zip(ids, approved, discarded):
            row = await workspace.quarantined(quarantine_id)
            acted = [r for r in (a, d) if r.loaded or r.message == "discarded"]
            assert len(acted) == 1, (a, d)
            other = d if acted[0] is a else a
            assert other.message.startswith(f"being {'approved' if other is d else 'discarded'}"
                                            f" by pid {os.getpid()} on ") or \
                other.message.startswith("already "), other
            assert row.status == ("approved" if acted[0] is a else "discarded")
            actions = [x.action for x in await workspace.quarantine_history(quarantine_id)]
            assert len(actions) == 1
    loaded = [r["id"] for r in read_jsonl(path.parent / "out" / "results.jsonl")]
    approved_ids = {r.quarantine_id for r in approved if r.loaded}
    assert len(loaded) == len(set(loaded)) == 4 + len(approved_ids)
