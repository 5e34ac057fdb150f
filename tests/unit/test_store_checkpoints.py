"""The store's side of resumable runs: checkpoints, what ends a run's rows, claiming a run, and a
store from the very first schema migrating on open with its data."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.events import RunStatus
from core.records import Outcome, Stage
from core.store import PASSED, Store
from core.store.migrate import SCHEMA_HEAD
from tests.unit.store_records import result, run_start, summary

COMPARED = ("record_id", "ordinal", "outcome", "stage", "reason", "error_type", "input", "output",
            "scores", "verdict", "input_tokens", "output_tokens", "cost_usd", "latency_s",
            "cached", "llm_calls")
QUARANTINE_COMPARED = ("record_id", "ordinal", "stage", "reason", "error_type", "input", "output",
                       "raw_output", "messages", "scores", "verdict", "status")


def batch(prefix: str) -> list[Any]:
    out = [result(0, Outcome.LOADED), result(1, Outcome.QUARANTINED, stage=Stage.EVALUATE,
                                             reason="label_ok failed"),
           result(2, Outcome.SKIPPED)]
    for item in out:
        item.record.id = f"{prefix}-{item.record.id}"
    return out


async def test_a_checkpoint_stores_what_write_results_stores_with_passed_for_loaded(
        store: Store) -> None:
    await store.start_run(run_start("run-a"))
    await store.start_run(run_start("run-b"))
    await store.write_results("run-a", "sentiment", batch("x"))
    await store.checkpoint("run-b", "sentiment", batch("x"))
    written = await store.record_results("run-a")
    checkpointed = await store.record_results("run-b")
    assert [r.outcome for r in checkpointed] == [PASSED, "quarantined", "skipped"]
    for a, b in zip(written, checkpointed):
        for column in COMPARED:
            if column == "outcome" and a.outcome == "loaded":
                continue
            assert getattr(a, column) == getattr(b, column), column
        assert abs(a.created_at - b.created_at) < timedelta(seconds=5)
    (qa,) = await store.list_quarantine(run_id="run-a")
    (qb,) = await store.list_quarantine(run_id="run-b")
    assert all(getattr(qa, c) == getattr(qb, c) for c in QUARANTINE_COMPARED)


async def test_refused_rows_are_quarantined_and_replaced_rows_go(store: Store) -> None:
    await store.start_run(run_start())
    first = batch("r")
    await store.checkpoint("run-0001", "sentiment", first)
    rows = await store.record_results("run-0001")
    refused = first[0]
    refused.outcome, refused.stage = Outcome.QUARANTINED, Stage.LOAD
    refused.reason, refused.error_type = "sqlite destination: constraint failed", "LoadError"
    await store.checkpoint("run-0001", "sentiment", [], refused=[refused],
                           replaced=[rows[2].id])
    after = {r.record_id: r for r in await store.record_results("run-0001")}
    assert set(after) == {"r-rec-0", "r-rec-1"}  # the skipped row was replaced (by nothing)
    assert (after["r-rec-0"].outcome, after["r-rec-0"].stage) == ("quarantined", "load")
    assert after["r-rec-0"].error_type == "LoadError"
    quarantined = await store.list_quarantine(run_id="run-0001")
    assert [(q.record_id, q.stage) for q in quarantined] == [("r-rec-1", "evaluate"),
                                                             ("r-rec-0", "load")]
    assert quarantined[1].output == {"sentiment": "positive"}


async def test_the_end_of_a_run_skips_what_was_not_written_and_loads_the_rest(store: Store) -> None:
    await store.start_run(run_start())
    passed = [result(i, Outcome.LOADED) for i in range(5)]
    await store.checkpoint("run-0001", "sentiment", passed)
    await store.skip_passed("run-0001", ["rec-3", "rec-4"], "not loaded: cancelled")
    await store.begin_commit("run-0001", "1:2:3:4")
    run = await store.get_run("run-0001")
    assert (run.commit_state, run.commit_token) == ("committing", "1:2:3:4")
    assert await store.finish_commit("run-0001") == 3
    rows = {r.record_id: r for r in await store.record_results("run-0001")}
    assert [rows[f"rec-{i}"].outcome for i in range(5)] == ["loaded"] * 3 + ["skipped"] * 2
    assert rows["rec-3"].reason == "not loaded: cancelled" and rows["rec-3"].output is not None
    assert (await store.get_run("run-0001")).commit_state == "committed"
    await store.reset_commit_state("run-0001")
    assert (await store.get_run("run-0001")).commit_token is None


async def test_resume_rows_page_through_a_run_without_inputs_and_outputs(store: Store) -> None:
    await store.start_run(run_start())
    await store.checkpoint("run-0001", "sentiment", [result(i, Outcome.LOADED) for i in range(7)])
    pages = [page async for page in store.resume_rows("run-0001", page=3)]
    assert [len(page) for page in pages] == [3, 3, 1]
    row = pages[0][0]
    assert (row.record_id, row.outcome, bool(row.has_output)) == ("rec-0", PASSED, True)
    assert row.verdict["passed"] is True and not hasattr(row, "input")
    (stored,) = await store.stored_results([row.id])
    assert stored.input == {"text": "review 0", "n": 0}


async def test_only_one_process_claims_an_unfinished_run(store: Store) -> None:
    await store.start_run(run_start())
    await store.finish_run(summary(status=RunStatus.CANCELLED), [])
    run = await store.get_run("run-0001")
    assert await store.claim_run("run-0001", status=run.status, updated_at=run.updated_at,
                                 options={"pid": 1}) == 2
    assert await store.claim_run("run-0001", status=run.status, updated_at=run.updated_at,
                                 options={"pid": 2}) is None
    claimed = await store.get_run("run-0001")
    assert (claimed.status, claimed.attempts, claimed.options) == ("running", 2, {"pid": 1})
    assert claimed.finished_at is None


async def test_unfinished_runs_are_running_or_stopped_with_records_left(store: Store) -> None:
    for run_id, status, skipped in (("done", "success", 0), ("cut", "cancelled", 4),
                                    ("clean-cancel", "cancelled", 0), ("crashed", "running", 0),
                                    ("budget", "partial", 2), ("broken", "failed", 1)):
        await store.start_run(run_start(run_id))
        if status != "running":
            finished = summary(run_id, status=status)
            await store.finish_run(type(finished)(**{
                **{f: getattr(finished, f) for f in finished.__dataclass_fields__},
                "skipped": skipped}), [])
    unfinished = {run.run_id for run in await store.unfinished_runs()}
    assert unfinished == {"cut", "crashed", "budget", "broken"}


def _insert(db: sqlite3.Connection, table: str, **values: Any) -> None:
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(values.values()))


async def test_a_store_from_the_first_schema_migrates_on_open_with_its_data(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from core.store.migrate import alembic_config

    path = tmp_path / "first.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    when = "2025-01-02 03:04:05.000000"
    with sqlite3.connect(path) as db:
        _insert(db, "pipelines", name="sentiment", version="1", definition='{"name": "sentiment"}',
                created_at=when, updated_at=when)
        _insert(db, "pipeline_runs", run_id="old-run", pipeline_name="sentiment",
                pipeline_version="1", started_at=when, updated_at=when, finished_at=when,
                status="partial", config='{"name": "sentiment"}', context_hashes="{}",
                params="{}", options='{"limit": 10}', extracted=3, transformed=3, evaluated=3,
                loaded=2, quarantined=1, skipped=0, cost_usd=0.5, cost_by_stage="{}",
                cost_by_model="{}", input_tokens=30, output_tokens=9, llm_calls=3, cache_hits=0,
                warnings='["slow"]', extra="{}", prompt_hash="a" * 64)
        for n, outcome in enumerate(["loaded", "loaded", "quarantined"]):
            _insert(db, "record_results", run_id="old-run", record_id=f"r{n}", ordinal=n,
                    outcome=outcome, input=f'{{"text": "t{n}"}}', output='{"label": "x"}',
                    scores="[]", input_tokens=10, output_tokens=3, cost_usd=0.1, latency_s=0.2,
                    cached=0, llm_calls=1, created_at=when)
        _insert(db, "quarantined_records", run_id="old-run", pipeline_name="sentiment",
                record_id="r2", ordinal=2, stage="evaluate", reason="label wrong",
                input='{"text": "t2"}', scores="[]", quarantined_at=when, status="open")
        _insert(db, "llm_cache", key="k" * 64, provider="openai", model="gpt-4o-mini",
                response='{"text": "cached"}', created_at=when, hits=4)
        _insert(db, "prompt_versions", hash="a" * 64, kind="prompt", content="Classify {{ x }}",
                created_at=when)
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001",)

    async with await Store.open(f"sqlite:///{path}") as store:
        run = await store.get_run("old-run")
        assert (run.status, run.loaded, run.quarantined, run.cost_usd) == ("partial", 2, 1, 0.5)
        assert (run.warnings, run.options) == (["slow"], {"limit": 10})
        assert (run.attempts, run.commit_state, run.throttled, run.shard_group) == (1, None, 0, None)
        rows = await store.record_results("old-run")
        assert [(r.record_id, r.outcome, r.input) for r in rows] == [
            ("r0", "loaded", {"text": "t0"}), ("r1", "loaded", {"text": "t1"}),
            ("r2", "quarantined", {"text": "t2"})]
        (quarantined,) = await store.list_quarantine()
        assert (quarantined.record_id, quarantined.reason) == ("r2", "label wrong")
        assert await store.cache_get("k" * 64) == {"text": "cached"}
        assert await store.get_version("a" * 64) == ("prompt", "Classify {{ x }}")
        assert await store.unfinished_runs() == []
        # And the upgraded store takes new runs and checkpoints.
        await store.start_run(run_start("new-run", pipeline="sentiment"))
        await store.checkpoint("new-run", "sentiment", [result(0, Outcome.LOADED)])
        assert [r.outcome for r in await store.record_results("new-run")] == [PASSED]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (SCHEMA_HEAD,)


@pytest.mark.postgres
async def test_a_postgres_store_from_the_first_schema_migrates_on_open(pg_database) -> None:
    from alembic import command

    from core.store.engine import StoreTarget
    from core.store.migrate import alembic_config

    engine = StoreTarget.parse(pg_database.url).create_engine(single_use=True)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0001"))
    finally:
        await engine.dispose()
    pg_database.sql("INSERT INTO pipelines (name, version, definition, created_at, updated_at) "
                    "VALUES ('p', '1', '{}', now(), now())")
    pg_database.sql("INSERT INTO pipeline_runs (run_id, pipeline_name, pipeline_version, "
                    "started_at, updated_at, status, config, context_hashes, params, options, "
                    "extracted, transformed, evaluated, loaded, quarantined, skipped, "
                    "cost_by_stage, cost_by_model, input_tokens, output_tokens, llm_calls, "
                    "cache_hits, warnings, extra) VALUES ('old', 'p', '1', now(), now(), "
                    "'success', '{}', '{}', '{}', '{}', 2, 2, 2, 2, 0, 0, '{}', '{}', 0, 0, 2, 0, "
                    "'[]', '{}')")
    async with await Store.open(pg_database.url) as store:
        run = await store.get_run("old")
        assert (run.loaded, run.attempts, run.commit_state) == (2, 1, None)
    assert pg_database.rows("SELECT version_num FROM alembic_version") == [[SCHEMA_HEAD]]
