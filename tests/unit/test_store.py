"""The history store on a real SQLite file: schema, runs, records, quarantine, cache, errors."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from core.errors import StoreError
from core.records import (
    EvaluatorStats,
    Outcome,
    Record,
    RecordResult,
    Stage,
    Verdict,
)
from core.store import Store
from core.store.engine import StoreTarget
from core.store.migrate import MIGRATIONS, head_revision, new_revision
from tests.unit.store_records import T0, call, progress, result, run_start, score, summary

TABLES = {"pipelines", "pipeline_runs", "record_results", "evaluation_results",
          "quarantined_records", "quarantine_actions", "prompt_versions", "context_versions",
          "llm_cache", "lineage", "monitoring_alerts", "judge_agreements", "model_adaptations"}


# -- schema --------------------------------------------------------------------------------------


async def test_migrations_create_every_table_in_wal_mode(sqlite_store: Store, home: Path) -> None:
    with sqlite3.connect(home / "loom.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert tables == TABLES | {"alembic_version"}
    assert version == [(head_revision(),)]
    assert journal == "wal"
    assert sqlite_store.url == f"sqlite:///{home / 'loom.db'}"


async def test_reopening_is_idempotent_and_keeps_data(home: Path) -> None:
    async with await Store.open() as store:
        await store.start_run(run_start())
    for _ in range(2):
        async with await Store.open() as store:
            assert (await store.get_run("run-0001")) is not None
    with sqlite3.connect(home / "loom.db") as db:
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


async def test_models_match_the_migrations(tmp_path: Path) -> None:
    # Autogenerate against a store at head: no operations means models.py and the migrations
    # describe the same schema.
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    script = new_revision("nothing changed", migrations=migrations).read_text()
    upgrade = script.split("def upgrade() -> None:")[1].split("def downgrade")[0]
    operations = [line.strip() for line in upgrade.splitlines()
                  if line.strip() and not line.strip().startswith("#")]
    assert operations == ["pass"], upgrade


_OPENER = """
import asyncio, os, sys, time
from pathlib import Path
from core.store import Store

ready, go, urls = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
ready.touch()
while not go.exists():
    time.sleep(0.002)

async def main():
    for url in urls:
        store = await Store.open(url)
        await store.cache_put(f"written-by-{os.getpid()}", {}, provider="p", model="m")
        await store.close()

asyncio.run(main())
"""


def test_two_processes_open_the_same_new_store_at_once(tmp_path: Path) -> None:
    urls = [f"sqlite:///{tmp_path / f'fresh{i}' / 'loom.db'}" for i in range(5)]
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{n}" for n in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(ready), str(go), *urls],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ready in readies]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()  # both are imported and waiting: they open the five stores together
        outcomes = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outcomes):
        assert proc.returncode == 0, err
    for url in urls:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            assert TABLES <= tables
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
            assert db.execute("SELECT count(*) FROM llm_cache").fetchone() == (2,)


# -- opening errors ------------------------------------------------------------------------------


def _one_line_naming(error: StoreError, path: Path) -> None:
    text = str(error)
    assert "\n" not in text
    assert str(path) in text


async def test_unwritable_loom_home_is_one_line_naming_the_path(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    home = blocker / "home"
    monkeypatch.setenv("LOOM_HOME", str(home))
    with pytest.raises(StoreError) as caught:
        await Store.open()
    _one_line_naming(caught.value, home / "loom.db")
    assert "Not a directory" in str(caught.value)


async def test_a_file_that_is_not_a_database_is_one_line(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "loom.db").write_bytes(b"this is not sqlite\n" * 200)
    with pytest.raises(StoreError) as caught:
        await Store.open()
    _one_line_naming(caught.value, home / "loom.db")
    assert "not a database" in str(caught.value)


async def test_a_folder_where_the_database_should_be_is_one_line(home: Path) -> None:
    (home / "loom.db").mkdir(parents=True)
    with pytest.raises(StoreError) as caught:
        await Store.open()
    _one_line_naming(caught.value, home / "loom.db")


def test_urls_get_async_drivers_and_hide_passwords(tmp_path: Path) -> None:
    target = StoreTarget.parse("postgres://loom:s3cret@db.example:5432/loom")
    assert target.url.drivername == "postgresql+asyncpg"
    assert "s3cret" not in target.display and "s3cret" not in target.where
    assert target.path is None
    sqlite_target = StoreTarget.parse(f"sqlite:///{tmp_path}/x.db")
    assert sqlite_target.url.drivername == "sqlite+aiosqlite"
    assert sqlite_target.path == tmp_path / "x.db"
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        StoreTarget.parse("mysql://u@h/db")
    with pytest.raises(StoreError, match="in-memory"):
        StoreTarget.parse("sqlite://")


# -- runs ----------------------------------------------------------------------------------------


async def test_run_lifecycle_reads_back(store: Store) -> None:
    await store.start_run(run_start())
    run = await store.get_run("run-0001")
    assert run is not None and run.status == "running"
    assert run.config["transform"]["api_key"] == "${KEY}"  # placeholders stay unresolved
    assert run.started_at == T0 and run.started_at.tzinfo is not None
    assert run.context_hashes == {"taxonomy": "b" * 64}

    await store.heartbeat("run-0001", progress())
    run = await store.get_run("run-0001")
    assert (run.extracted, run.transformed, run.evaluated, run.loaded) == (5, 4, 3, 2)
    assert run.updated_at > T0

    results = [result(0, Outcome.LOADED), result(1, Outcome.QUARANTINED, stage=Stage.EVALUATE,
                                                 reason="label_ok failed"),
               result(2, Outcome.LOADED), result(3, Outcome.SKIPPED),
               result(4, Outcome.QUARANTINED, stage=Stage.EVALUATE, reason="label_ok failed")]
    await store.write_results("run-0001", "sentiment", results[:3])
    await store.write_results("run-0001", "sentiment", results[3:])
    await store.write_results("run-0001", "sentiment", [])

    stats = [EvaluatorStats(evaluator="label_ok", type="one_of", threshold=1.0, weight=1.0,
                            count=4, passed=2, mean=0.5, std=0.5, min=0.0, max=1.0, p50=0.5,
                            p95=1.0),
             EvaluatorStats(evaluator="judged", type="custom_criteria", threshold=0.75,
                            weight=2.0, count=4, passed=4, errors=0, mean=0.9, cost_usd=None)]
    lineage = {"source": "csv://reviews.csv", "destination": "jsonl://out.jsonl",
               "records_in": 5, "records_out": 2}
    await store.finish_run(summary(), stats, lineage)

    run = await store.get_run("run-0001")
    assert run.status == "partial" and run.status_reason == "rejection rate 0.4"
    assert (run.extracted, run.loaded, run.quarantined, run.skipped) == (5, 3, 2, 0)
    assert run.transformed == 4  # from the last heartbeat
    assert run.rejection_rate == pytest.approx(0.4)
    assert run.cost_usd == pytest.approx(0.012)
    assert run.cost_by_stage == {"transform": 0.01, "evaluate": 0.002}
    assert run.latency_p99_s == 1.1 and run.warnings == ["slow provider"]
    assert run.extra == {"budget_usd": 5.0}
    assert run.finished_at is not None and run.finished_at.tzinfo is not None

    evaluations = await store.evaluation_results("run-0001")
    assert [(e.evaluator, e.passed, e.pass_rate) for e in evaluations] == [
        ("label_ok", 2, 0.5), ("judged", 4, 1.0)]
    assert evaluations[1].cost_usd is None  # unknown price stays unknown

    rows = await store.record_results("run-0001")
    assert [r.ordinal for r in rows] == [0, 1, 2, 3, 4]
    assert [r.outcome for r in rows] == ["loaded", "quarantined", "loaded", "skipped", "quarantined"]
    first = rows[0]
    assert first.output == {"sentiment": "positive"}
    assert first.scores[0]["evaluator"] == "label_ok" and first.verdict["passed"] is True
    assert (first.input_tokens, first.output_tokens, first.llm_calls) == (100, 20, 1)
    assert first.cost_usd == pytest.approx(0.001) and first.cached is False
    assert rows[3].output is None and rows[3].verdict is None and rows[3].stage == "extract"
    page = await store.record_results("run-0001", after_ordinal=2, limit=1)
    assert [r.ordinal for r in page] == [3]

    (row,) = await store.lineage("run-0001")
    assert (row.records_in, row.records_out, row.query) == (5, 2, None)

    latest = await store.last_run_per_pipeline()
    assert set(latest) == {"sentiment"} and latest["sentiment"].run_id == "run-0001"


async def test_start_run_records_the_pipeline(store: Store) -> None:
    await store.record_pipeline("sentiment", "0.9", "old", {"name": "sentiment"}, "/old.yaml")
    await store.start_run(run_start())
    (pipeline,) = await store.list_pipelines()
    assert (pipeline.version, pipeline.description, pipeline.path) == (
        "1.0.0", "Classify", "/pipelines/sentiment.yaml")
    assert pipeline.created_at <= pipeline.updated_at


async def test_unknown_runs_are_errors_not_silent(store: Store) -> None:
    with pytest.raises(StoreError, match="run nope was never started"):
        await store.heartbeat("nope", progress())
    with pytest.raises(StoreError, match="never started"):
        await store.finish_run(summary("nope"), [])
    with pytest.raises(StoreError, match="cannot write to the history store"):
        await store.write_results("nope", "sentiment", [result(0, Outcome.LOADED)])
    assert await store.record_results("nope") == []


async def test_costs_with_unknown_prices_and_cache_answers(store: Store) -> None:
    await store.start_run(run_start())
    unknown = result(0, Outcome.LOADED)
    unknown.scores[1].calls.append(call("evaluate", cost=None))
    cached = result(1, Outcome.LOADED)
    cached.transform.calls[0] = call(cached=True, cost=0.0)
    await store.write_results("run-0001", "sentiment", [unknown, cached])
    first, second = await store.record_results("run-0001")
    assert first.cost_usd is None and first.llm_calls == 2 and first.input_tokens == 200
    assert second.cached is True and second.llm_calls == 0


async def test_datetimes_are_stored_in_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    await store.start_run(run_start(started_at=datetime(2025, 3, 1, 13, 0, tzinfo=paris)))
    run = await store.get_run("run-0001")
    assert run.started_at == T0 and run.started_at.utcoffset() == timedelta(0)


async def test_list_runs_pages_newest_first_exactly_once(store: Store) -> None:
    expected = []
    for i in range(13):
        started = T0 + timedelta(minutes=i // 3)  # ties on started_at: run_id breaks them
        pipeline = "sentiment" if i % 2 else "summaries"
        await store.start_run(run_start(f"run-{i:04d}", pipeline, started))
        expected.append((started, f"run-{i:04d}"))
    await store.finish_run(summary("run-0003", status="success"), [])
    expected.sort(reverse=True)

    seen, before = [], None
    while page := await store.list_runs(limit=4, before=before):
        seen.extend((r.started_at, r.run_id) for r in page)
        before = (page[-1].started_at, page[-1].run_id)
    assert seen == expected

    sentiment = await store.list_runs(pipeline="sentiment", limit=100)
    assert [r.run_id for r in sentiment] == [rid for _, rid in expected if int(rid[-4:]) % 2]
    assert [r.run_id for r in await store.list_runs(status="success")] == ["run-0003"]

    latest = await store.last_run_per_pipeline()
    assert {name: run.run_id for name, run in latest.items()} == {
        "sentiment": "run-0011", "summaries": "run-0012"}


async def test_get_run_by_unique_prefix(store: Store) -> None:
    await store.start_run(run_start("20250301-abc123"))
    await store.start_run(run_start("20250301-abd456"))
    assert (await store.get_run("20250301-abc")).run_id == "20250301-abc123"
    assert (await store.get_run("20250301-abd456")).run_id == "20250301-abd456"
    assert await store.get_run("20250301-x") is None
    assert await store.get_run("20250301-ABC") is None  # ids are case-sensitive
    with pytest.raises(StoreError, match="matches more than one run"):
        await store.get_run("20250301-ab")


# -- quarantine ----------------------------------------------------------------------------------


async def test_quarantine_rows_carry_input_output_scores_verdict(store: Store) -> None:
    await store.start_run(run_start())
    bad = result(7, Outcome.QUARANTINED, stage=Stage.EVALUATE, reason="label_ok failed")
    bad.record.data["when"] = datetime(2025, 1, 2, 3, 4, tzinfo=UTC)  # source-typed values
    bad.record.data["price"] = Decimal("12.50")
    broken = RecordResult(record=Record(id="rec-8", data={"line": "{oops"}, ordinal=8,
                                        extract_error="invalid JSON at column 2"),
                          outcome=Outcome.QUARANTINED, stage=Stage.EXTRACT)
    await store.write_results("run-0001", "sentiment", [result(6, Outcome.LOADED), bad, broken])

    assert await store.count_quarantine() == 2
    first, second = await store.list_quarantine()
    assert (first.record_id, first.ordinal, first.stage, first.status) == (
        "rec-7", 7, "evaluate", "open")
    assert first.input == {"text": "review 7", "n": 7, "when": "2025-01-02T03:04:00+00:00",
                           "price": 12.5}
    assert first.output == {"sentiment": "maybe"}
    assert first.raw_output == '{"sentiment": "maybe"}'
    assert first.messages == [{"role": "user", "content": "Classify: review 7"}]
    assert [s["evaluator"] for s in first.scores] == ["label_ok", "judged"]
    assert first.scores[0]["explanation"] == "not in the list"
    assert first.verdict == {"passed": False, "gate": "all_pass", "value": 0.5,
                             "threshold": None, "reason": "label_ok failed"}
    assert first.pipeline_name == "sentiment" and first.quarantined_at.tzinfo is not None
    assert (second.stage, second.reason, second.output, second.messages) == (
        "extract", "invalid JSON at column 2", None, None)
    assert (await store.get_quarantined(first.id)).record_id == "rec-7"
    assert await store.get_quarantined(9999) is None


async def _quarantine_many(store: Store) -> None:
    await store.start_run(run_start("run-a", "sentiment"))
    await store.start_run(run_start("run-b", "summaries", T0 + timedelta(hours=1)))
    batch_a = [result(i, Outcome.QUARANTINED, stage=Stage.EVALUATE if i % 3 else Stage.TRANSFORM,
                      reason=f"reason {i}: {'100% wrong' if i % 4 == 0 else 'off_label'}")
               for i in range(17)]
    batch_b = [result(i, Outcome.QUARANTINED, stage=Stage.LOAD, reason="sink refused")
               for i in range(6)]
    await store.write_results("run-a", "sentiment", batch_a)
    await store.write_results("run-b", "summaries", batch_b)


async def test_quarantine_keyset_paging_returns_every_row_once(store: Store) -> None:
    await _quarantine_many(store)
    seen, after = [], None
    while page := await store.list_quarantine(limit=5, after_id=after):
        seen.extend(q.id for q in page)
        after = page[-1].id
    assert len(seen) == 23 and seen == sorted(set(seen))

    seen_a, after = [], None
    while page := await store.list_quarantine(run_id="run-a", stage="evaluate", limit=3,
                                              after_id=after):
        seen_a.extend(q.ordinal for q in page)
        after = page[-1].id
    assert seen_a == [i for i in range(17) if i % 3]


async def test_quarantine_filters(store: Store) -> None:
    await _quarantine_many(store)
    assert await store.count_quarantine(pipeline="summaries") == 6
    assert await store.count_quarantine(run_id="run-a") == 17
    assert await store.count_quarantine(stage="transform") == 6
    assert await store.count_quarantine(stage=Stage.LOAD) == 6
    # case-insensitive, and % and _ are literal characters, not wildcards
    assert await store.count_quarantine(reason_contains="100% WRONG") == 5
    assert await store.count_quarantine(reason_contains="off_label") == 12
    assert await store.count_quarantine(reason_contains="off%label") == 0
    only = await store.list_quarantine(pipeline="sentiment", stage="transform",
                                       reason_contains="wrong")
    assert [q.ordinal for q in only] == [0, 12]
    first = (await store.list_quarantine(limit=1))[0]
    await store.resolve_quarantined(first.id, action="discard", status="discarded")
    assert await store.count_quarantine() == 22
    assert await store.count_quarantine(status="discarded") == 1
    assert await store.count_quarantine(status=None) == 23


async def test_resolve_quarantined_records_each_action(store: Store) -> None:
    await store.start_run(run_start())
    await store.write_results("run-0001", "sentiment", [
        result(0, Outcome.QUARANTINED, stage=Stage.EVALUATE, reason="label_ok failed"),
        result(1, Outcome.QUARANTINED, stage=Stage.EVALUATE, reason="label_ok failed")])
    edited, retried = await store.list_quarantine()

    await store.resolve_quarantined(edited.id, action="edit", status="approved",
                                    final_output={"sentiment": "neutral"}, note="fixed by hand",
                                    actor="ana")
    row = await store.get_quarantined(edited.id)
    assert row.status == "approved" and row.final_output == {"sentiment": "neutral"}
    assert row.resolution_note == "fixed by hand" and row.resolved_at is not None
    (action,) = await store.quarantine_actions(edited.id)
    assert (action.action, action.actor) == ("edit", "ana")
    assert action.details == {"from": "open", "to": "approved", "note": "fixed by hand",
                              "final_output": {"sentiment": "neutral"}}
    assert action.at.tzinfo is not None

    # A reprocess that still fails stays open, with the new reason, scores and verdict.
    new_verdict = Verdict(passed=False, gate="all_pass", value=0.0, threshold=None,
                          reason="judged failed")
    await store.resolve_quarantined(retried.id, action="reprocess", status="open",
                                    reason="judged failed", scores=[score("judged", False)],
                                    verdict=new_verdict)
    row = await store.get_quarantined(retried.id)
    assert (row.status, row.reason, row.resolved_at) == ("open", "judged failed", None)
    assert [s["evaluator"] for s in row.scores] == ["judged"]
    assert row.verdict["reason"] == "judged failed"
    await store.resolve_quarantined(retried.id, action="discard", status="discarded")
    actions = await store.quarantine_actions(retried.id)
    assert [a.action for a in actions] == ["reprocess", "discard"]
    assert actions[1].details == {"from": "open", "to": "discarded"}

    with pytest.raises(StoreError, match="no quarantined record 999"):
        await store.resolve_quarantined(999, action="approve", status="approved")
    with pytest.raises(ValueError):
        await store.resolve_quarantined(edited.id, action="approve", status="done")


# -- versions, cache, alerts ---------------------------------------------------------------------


async def test_versions_are_content_addressed_and_idempotent(store: Store) -> None:
    await store.save_version("prompt", "p" * 64, "Classify {{ input.text }}",
                             path="prompts/c.j2", pipeline="sentiment")
    await store.save_version("prompt", "p" * 64, "Classify {{ input.text }}",
                             path="prompts/c.j2", pipeline="other")
    await store.save_version("system", "s" * 64, "You are careful.", path="prompts/sys.j2",
                             pipeline="sentiment")
    await store.save_version("context", "c" * 64, "# Taxonomy", path="context/taxonomy.md",
                             pipeline="sentiment")
    assert await store.get_version("p" * 64) == ("prompt", "Classify {{ input.text }}")
    assert await store.get_version("s" * 64) == ("system", "You are careful.")
    assert await store.get_version("c" * 64) == ("context", "# Taxonomy")
    assert await store.get_version("0" * 64) is None
    with pytest.raises(ValueError):
        await store.save_version("template", "t" * 64, "x", path="x", pipeline="p")


async def test_cache_get_put_hits_and_expiry(backend: str) -> None:
    async with await Store.open() as store:
        assert await store.cache_get("k1") is None
        await store.cache_put("k1", {"text": "positive"}, provider="openai", model="gpt-4o-mini",
                              ttl_s=3600)
        await store.cache_put("k2", {"text": "old"}, provider="openai", model="gpt-4o-mini",
                              ttl_s=0)  # expires at once
        await store.cache_put("k3", {"text": "forever"}, provider="openai", model="m")
        assert await store.cache_get("k1") == {"text": "positive"}
        assert await store.cache_get("k1") == {"text": "positive"}
        assert await store.cache_get("k2") is None
        assert await store.cache_get("k3") == {"text": "forever"}
        entry = await store.cache_entry("k3")
        assert entry.expires_at is None and entry.provider == "openai"
        assert await store.cache_prune() == 1
        assert await store.cache_entry("k2") is None
    async with await Store.open() as store:  # hits counted in memory reach the file on close
        assert (await store.cache_entry("k1")).hits == 2
        assert (await store.cache_entry("k3")).hits == 1
        await store.cache_put("k1", {"text": "negative"}, provider="openai", model="gpt-4o")
        entry = await store.cache_entry("k1")
        assert (entry.response, entry.model, entry.hits, entry.expires_at) == (
            {"text": "negative"}, "gpt-4o", 0, None)


async def test_alerts(store: Store) -> None:
    await store.start_run(run_start())
    first = await store.add_alert(pipeline="sentiment", run_id="run-0001",
                                  alert_type="latency_sla", severity="warning",
                                  message="p95 6.1 s over 5.0 s", threshold_value=5.0,
                                  actual_value=6.1, details={"stage": "transform"})
    second = await store.add_alert(pipeline="other", alert_type="cost_spike", severity="error",
                                   message="cost 3x the last run")
    assert [a.id for a in await store.list_alerts()] == [second, first]
    (alert,) = await store.list_alerts(run_id="run-0001")
    assert (alert.alert_type, alert.actual_value, alert.details) == (
        "latency_sla", 6.1, {"stage": "transform"})
    await store.acknowledge_alert(first, by="ana")
    assert [a.id for a in await store.list_alerts(unacknowledged=True)] == [second]
    assert [a.id for a in await store.list_alerts(pipeline="sentiment")] == [first]
    with pytest.raises(StoreError):
        await store.acknowledge_alert(12345)


async def test_concurrent_writers_in_one_process(store: Store) -> None:
    await store.start_run(run_start())
    batches = [[result(b * 10 + i, Outcome.LOADED) for i in range(10)] for b in range(8)]
    await asyncio.gather(*(store.write_results("run-0001", "sentiment", b) for b in batches),
                         *(store.heartbeat("run-0001", progress(loaded=n)) for n in range(8)))
    rows = await store.record_results("run-0001", limit=1000)
    assert [r.ordinal for r in rows] == list(range(80))


async def test_concurrent_cache_lookups_share_one_read(store: Store) -> None:
    await store.cache_put("a", {"text": "A"}, provider="p", model="m")
    await store.cache_put("b", {"text": "B"}, provider="p", model="m")
    first, again, other, missing = await asyncio.gather(
        store.cache_get("a"), store.cache_get("a"), store.cache_get("b"), store.cache_get("zz"))
    assert first == again == {"text": "A"} and first is not again  # each caller its own copy
    assert (other, missing) == ({"text": "B"}, None)
    await store.cache_put("c", {}, provider="p", model="m")  # a write flushes the hit counts
    assert (await store.cache_entry("a")).hits == 2


async def test_demote_loaded_to_quarantine_keeps_the_record(store: Store) -> None:
    await store.start_run(run_start())
    await store.start_run(run_start("run-other"))
    await store.write_results("run-0001", "sentiment", [
        result(0, Outcome.LOADED), result(1, Outcome.QUARANTINED, stage=Stage.EVALUATE,
                                          reason="label_ok failed"),
        result(2, Outcome.LOADED), result(3, Outcome.SKIPPED)])
    await store.write_results("run-other", "sentiment", [result(0, Outcome.LOADED)])

    assert await store.demote_loaded("run-0001", "commit to out.jsonl failed: disk full",
                                     quarantine=True) == 2
    rows = await store.record_results("run-0001")
    assert [r.outcome for r in rows] == ["quarantined", "quarantined", "quarantined", "skipped"]
    assert rows[0].stage == "load" and rows[0].reason.startswith("commit to out.jsonl failed")
    demoted = await store.list_quarantine(stage="load")
    assert [(q.record_id, q.ordinal, q.status) for q in demoted] == [
        ("rec-0", 0, "open"), ("rec-2", 2, "open")]
    assert demoted[0].input == {"text": "review 0", "n": 0}
    assert demoted[0].output == {"sentiment": "positive"}
    assert demoted[0].verdict["passed"] is True and len(demoted[0].scores) == 2
    assert demoted[0].pipeline_name == "sentiment" and demoted[0].quarantined_at.tzinfo is not None
    assert (await store.record_results("run-other"))[0].outcome == "loaded"  # other runs untouched
    assert await store.demote_loaded("run-0001", "again", quarantine=True) == 0


async def test_demote_loaded_to_skipped(store: Store) -> None:
    await store.start_run(run_start())
    await store.write_results("run-0001", "sentiment", [result(0, Outcome.LOADED)])
    assert await store.demote_loaded("run-0001", "not loaded: replace mode, run failed") == 1
    (row,) = await store.record_results("run-0001")
    assert (row.outcome, row.stage, row.reason) == (
        "skipped", "load", "not loaded: replace mode, run failed")
    assert await store.count_quarantine(status=None) == 0


async def test_a_failing_cache_read_fails_every_waiter(store: Store, backend: str, home: Path,
                                                       request: pytest.FixtureRequest) -> None:
    if backend == "postgres":
        request.getfixturevalue("pg_database").sql("DROP TABLE llm_cache")
        missing = 'relation "llm_cache" does not exist'
    else:
        with sqlite3.connect(home / "loom.db") as db:
            db.execute("DROP TABLE llm_cache")
        missing = "no such table"
    outcomes = await asyncio.gather(store.cache_get("a"), store.cache_get("b"),
                                    return_exceptions=True)
    assert all(isinstance(o, StoreError) and missing in str(o) for o in outcomes), outcomes
    assert "\n" not in str(outcomes[0])


async def test_list_runs_pages_back_up_and_to_the_oldest(store: Store) -> None:
    for i in range(10):
        await store.start_run(run_start(f"run-{i:04d}", "sentiment", T0 + timedelta(minutes=i)))
    assert await store.count_runs() == 10
    assert await store.count_runs(pipeline="other") == 0
    newest = await store.list_runs(limit=4)
    assert [r.run_id[-1] for r in newest] == ["9", "8", "7", "6"]
    older = await store.list_runs(limit=4, before=(newest[-1].started_at, newest[-1].run_id))
    assert [r.run_id[-1] for r in older] == ["5", "4", "3", "2"]
    # Back up from the older page: the 4 runs just newer, still newest first.
    back = await store.list_runs(limit=4, after=(older[0].started_at, older[0].run_id))
    assert [r.run_id for r in back] == [r.run_id for r in newest]
    assert [r.run_id[-1] for r in await store.list_runs(limit=3, oldest=True)] == ["2", "1", "0"]


async def test_list_quarantine_pages_back_and_to_the_last_page(store: Store) -> None:
    await store.start_run(run_start())
    await store.write_results("run-0001", "sentiment", [
        result(i, Outcome.QUARANTINED, stage=Stage.EVALUATE, reason="label_ok failed")
        for i in range(9)])
    ids = [row.id for row in await store.list_quarantine(limit=100)]
    assert len(ids) == 9
    assert [r.id for r in await store.list_quarantine(before_id=ids[5], limit=3)] == ids[2:5]
    assert [r.id for r in await store.list_quarantine(before_id=ids[1], limit=3)] == ids[:1]
    assert [r.id for r in await store.list_quarantine(last=True, limit=4)] == ids[5:]
    assert [r.id for r in await store.list_quarantine(after_id=ids[2], limit=2)] == ids[3:5]


async def test_new_cache_entries_are_seen_at_once_and_written_together(home: Path) -> None:
    async with await Store.open() as store:
        for n in range(5):
            await store.cache_put(f"k{n}", {"text": str(n)}, provider="p", model="m", ttl_s=60)
        assert await store.cache_get("k3") == {"text": "3"}  # not written yet, found anyway
        with sqlite3.connect(home / "loom.db") as db:  # another reader sees nothing yet
            assert db.execute("SELECT COUNT(*) FROM llm_cache").fetchone() == (0,)
    with sqlite3.connect(home / "loom.db") as db:  # closing the store wrote them
        rows = db.execute("SELECT key, hits FROM llm_cache ORDER BY key").fetchall()
    assert rows == [("k0", 0), ("k1", 0), ("k2", 0), ("k3", 1), ("k4", 0)]


async def test_cache_entries_go_out_with_the_next_batch_of_results(store: Store) -> None:
    await store.start_run(run_start())
    await store.cache_put("k", {"text": "x"}, provider="p", model="m")
    async with await Store.open() as other:  # another process's view of the same store
        assert await other.cache_entry("k") is None
        await store.write_results("run-0001", "sentiment", [result(0, Outcome.LOADED)])
        assert (await other.cache_entry("k")).response == {"text": "x"}


async def test_batched_cache_reads_serve_stores_without_the_inline_reader(store: Store) -> None:
    # PostgreSQL stores read through the async engine, several lookups in one query.
    store._cache_file = None
    await store.cache_put("a", {"text": "A"}, provider="p", model="m")
    await store.cache_flush()
    found = await asyncio.gather(store.cache_get("a"), store.cache_get("a"), store.cache_get("zz"))
    assert found == [{"text": "A"}, {"text": "A"}, None] and found[0] is not found[1]


async def test_revision_0004_adds_the_limit_columns_to_existing_runs(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from core.store.migrate import alembic_config

    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO pipelines (name, version, definition, created_at, updated_at) "
                   "VALUES ('p', '1', '{}', '2025-01-01', '2025-01-01')")
        db.execute("INSERT INTO pipeline_runs (run_id, pipeline_name, pipeline_version, started_at,"
                   " updated_at, status, config, context_hashes, params, options, extracted,"
                   " transformed, evaluated, loaded, quarantined, skipped, cost_by_stage,"
                   " cost_by_model, input_tokens, output_tokens, llm_calls, cache_hits, warnings,"
                   " extra) VALUES ('old-run', 'p', '1', '2025-01-01', '2025-01-01', 'success',"
                   " '{}', '{}', '{}', '{}', 1, 1, 1, 1, 0, 0, '{}', '{}', 0, 0, 0, 0, '[]', '{}')")
    async with await Store.open(f"sqlite:///{path}") as store:
        run = await store.get_run("old-run")
    assert (run.throttled, run.retries, run.concurrency, run.budget_usd) == (0, 0, None, None)


def test_schema_head_names_the_newest_migration() -> None:
    # Opening a store skips Alembic when the store is at SCHEMA_HEAD: the two must agree.
    from core.store.migrate import SCHEMA_HEAD

    assert SCHEMA_HEAD == head_revision()


# -- PostgreSQL specifics ------------------------------------------------------------------------


async def test_postgres_store_has_every_table_at_head_with_jsonb(pg_database) -> None:
    async with await Store.open(pg_database.url) as store:
        assert store.url == pg_database.url.replace("loom-test-password", "***")
    tables = {row[0] for row in pg_database.rows(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == TABLES | {"alembic_version"}
    assert pg_database.rows("SELECT version_num FROM alembic_version") == [[head_revision()]]
    types = dict(pg_database.rows(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'record_results'"))
    assert types["input"] == types["output"] == types["scores"] == "jsonb"
    assert types["created_at"] == "timestamp with time zone"


async def test_models_match_the_migrations_on_postgres(pg_database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from core.store.models import metadata

    await (await Store.open(pg_database.url)).close()
    engine = StoreTarget.parse(pg_database.url).create_engine(single_use=True)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), metadata))
    finally:
        await engine.dispose()
    assert diff == []


def test_two_processes_open_the_same_new_postgres_store_at_once(tmp_path: Path,
                                                               postgres_cluster) -> None:
    databases = [postgres_cluster.create_database("fresh") for _ in range(3)]
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{n}" for n in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(ready), str(go),
                               *(d.url for d in databases)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ready in readies]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readies) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()  # the advisory lock makes one wait while the other migrates
        outcomes = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outcomes):
        assert proc.returncode == 0, err
    for database in databases:
        assert database.rows("SELECT version_num FROM alembic_version") == [[head_revision()]]
        assert database.rows("SELECT count(*) FROM llm_cache") == [["2"]]
        database.drop()


async def test_postgres_store_errors_are_one_line_without_the_password(pg_database) -> None:
    from tests.support.postgres import free_port

    wrong = pg_database.url.replace("loom-test-password", "wrong-secret-pw")
    with pytest.raises(StoreError) as auth:
        await Store.open(wrong)
    text = str(auth.value)
    assert 'password authentication failed for user "loom"' in text
    assert "wrong-secret-pw" not in text and "\n" not in text and "***" in text

    closed = f"postgresql://loom:loom-test-password@127.0.0.1:{free_port()}/x"
    with pytest.raises(StoreError) as refused:
        await Store.open(closed)
    assert "loom-test-password" not in str(refused.value)
    assert str(refused.value).startswith("cannot open the history store postgresql://loom:***@")


async def test_nul_characters_reach_a_postgres_store(pg_database) -> None:
    async with await Store.open(pg_database.url) as store:
        await store.start_run(run_start())
        bad = result(0, Outcome.QUARANTINED, stage=Stage.TRANSFORM, reason="bad \x00 answer")
        bad.record.data["text"] = "a\x00b \\u0000 literal"
        bad.transform.raw_text = "raw \x00"
        await store.write_results("run-0001", "sentiment", [bad])
        (row,) = await store.list_quarantine()
    assert row.input["text"] == "a\ufffdb \\u0000 literal"  # the literal text is untouched
    assert (row.reason, row.raw_output) == ("bad \ufffd answer", "raw \ufffd")
