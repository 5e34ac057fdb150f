"""The history with shard groups gathered, as the workbench pages it: each page's groups read
whole in one query (Workspace.shard_groups), and the number of lines it shows
(Workspace.count_history), with and without a status filter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.api import ShardGroup, Workspace
from core.events import RunSummary
from core.sharding import Shard
from core.store import RunStart, Store

T0 = datetime(2026, 5, 1, tzinfo=UTC)


async def add_run(store: Store, n: int, *, pipeline: str = "p", status: str = "success",
                  shard: Shard | None = None) -> str:
    rid = f"run-{n:03d}"
    await store.start_run(RunStart(
        run_id=rid, pipeline=pipeline, pipeline_version="1", pipeline_path="/p.yaml",
        started_at=T0 + timedelta(minutes=n), config={}, model="m", provider="openai",
        prompt_hash="h", system_hash=None, context_hashes={}, params={}, options={},
        source="csv://x.csv", destination="sqlite://x.db", shard=shard))
    await store.finish_run(RunSummary(
        run_id=rid, pipeline=pipeline, status=status, status_reason=None, extracted=1, loaded=1,
        quarantined=0, skipped=0, cost_usd=0.001, cost_by_stage={}, cost_by_model={},
        input_tokens=1, output_tokens=1, llm_calls=1, cache_hits=0, duration_s=1.0,
        latency_p50_s=0.1, latency_p95_s=0.1, latency_p99_s=0.1), [])
    return rid


async def test_groups_are_read_whole_and_the_lines_counted(tmp_path: Path) -> None:
    async with Workspace(tmp_path) as workspace:
        store = await workspace.store()
        await add_run(store, 0)
        await add_run(store, 1, shard=Shard(0, 3, "g1"))
        await add_run(store, 2, shard=Shard(1, 3, "g1"), status="failed")
        await add_run(store, 3)
        await add_run(store, 4, shard=Shard(1, 3, "g1"))  # the retry of shard 1
        await add_run(store, 5, pipeline="q", shard=Shard(0, 2, "g1"))  # same name, other pipeline
        await add_run(store, 6, pipeline="q", status="failed")

        page = await workspace.runs(limit=2, before=(T0 + timedelta(minutes=5), "run-005"))
        assert [run.run_id for run in page] == ["run-004", "run-003"]
        groups = await workspace.shard_groups(page)
        assert list(groups) == [("p", "g1")]  # not q's group of the same name
        group = groups[("p", "g1")]
        assert isinstance(group, ShardGroup)
        assert [run.run_id for run in group.runs] == ["run-004", "run-002", "run-001"]
        assert group.missing == [2] and group.status == "running"
        assert await workspace.shard_groups([]) == {}

        # p: run-000, run-003, and g1's line with its 3 runs; q: run-006, and its group's line
        # with its one run.
        assert await workspace.count_history() == 2 + 4 + 1 + 2
        assert await workspace.count_history(pipeline="p") == 6
        # A failed shard brings its whole group (every run) with it; a failed run itself.
        assert await workspace.count_history(status="failed") == 4 + 1
        assert await workspace.count_history(pipeline="q", status="success") == 2
        assert await workspace.count_history(pipeline="nothing") == 0
        # `history` (loom runs) gathers the same groups.
        entries = await workspace.history(pipeline="p")
        assert [getattr(e, "run_id", None) or e.group for e in entries] == ["g1", "run-003",
                                                                             "run-000"]
