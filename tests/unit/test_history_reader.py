"""The quick history reader (core.store.history_reader): `loom runs` reads a SQLite store at
the current schema with sqlite3, and must read exactly what the full Store reads."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import JSON, Boolean

from core import cli
from core.events import RunSummary
from core.sharding import Shard
from core.store import MonitoringAlert, PipelineRun, RunStart, Store
from core.store import history_reader
from core.store.history_reader import (BOOL_COLUMNS, DATETIME_COLUMNS, JSON_COLUMNS,
                                       open_history_reader, sqlite_path)
from core.store.models import UTCDateTime

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def start(run_id: str, pipeline: str, minutes: int, *, path: str | None = None,
          shard: Shard | None = None) -> RunStart:
    return RunStart(
        run_id=run_id, pipeline=pipeline, pipeline_version="1.0.0",
        pipeline_path=path or f"/pipelines/{pipeline}/pipeline.yaml",
        started_at=T0 + timedelta(minutes=minutes),
        config={"name": pipeline, "transform": {"api_key": "${KEY}"}}, model="gpt-4o-mini",
        provider="openai", prompt_hash="a" * 64, system_hash=None, context_hashes={"t": "b" * 64},
        params={"since": "2025-01-01"}, options={"limit": 10}, source="csv://in.csv",
        destination="jsonl://out.jsonl", shard=shard)


def summary(run_id: str, pipeline: str, status: str = "success") -> RunSummary:
    return RunSummary(
        run_id=run_id, pipeline=pipeline, status=status, status_reason=None, extracted=5,
        loaded=4, quarantined=1, skipped=0, cost_usd=0.012, cost_by_stage={"transform": 0.012},
        cost_by_model={"gpt-4o-mini": 0.012}, input_tokens=500, output_tokens=100, llm_calls=5,
        cache_hits=1, duration_s=2.5, latency_p50_s=0.4, latency_p95_s=0.9, latency_p99_s=1.1,
        warnings=("slow provider",), extra={"budget_usd": 5.0})


@pytest.fixture
async def history(loom_home: Path) -> Path:
    """A store with plain runs (two files share a name), a shard group with a retry, a run
    still running, and alerts."""
    store = await Store.open()
    try:
        await store.start_run(start("r1", "sentiment", 1))
        await store.finish_run(summary("r1", "sentiment"), [])
        await store.start_run(start("r2", "sentiment", 2, path="/elsewhere/sentiment.yaml"))
        await store.finish_run(summary("r2", "sentiment", "partial"), [])
        for run_id, index, minutes, status in (("s0", 0, 3, "success"), ("s1", 1, 4, "failed"),
                                               ("s1b", 1, 5, "success")):
            await store.start_run(start(run_id, "triage", minutes,
                                        shard=Shard(index=index, count=2, group="nightly")))
            await store.finish_run(summary(run_id, "triage", status), [])
        await store.start_run(start("r3", "invoices", 6))
        await store.add_alert(pipeline="sentiment", alert_type="cost_spike", severity="warning",
                              message="cost 3x the median", run_id="r2",
                              details={"median": 0.004}, threshold_value=2.0, actual_value=3.0)
        await store.add_alert(pipeline="sentiment", alert_type="latency_sla", severity="error",
                              message="p95 over 1 s", run_id="r2")
    finally:
        await store.close()
    return loom_home / "loom.db"


def columns(row: object) -> dict[str, object]:
    return {name: getattr(row, name) for name in vars(row) if not name.startswith("_")}


async def test_every_run_and_alert_reads_as_the_store_reads_it(history: Path) -> None:
    reader = open_history_reader(f"sqlite:///{history}")
    assert reader is not None
    store = await Store.open()
    try:
        expected_runs = await store.list_runs(limit=50)
        quick_runs = reader.list_runs(limit=50)
        assert [r.run_id for r in quick_runs] == [r.run_id for r in expected_runs]
        for quick, full in zip(quick_runs, expected_runs, strict=True):
            assert columns(quick) == full.model_dump()
        assert ([r.run_id for r in reader.list_runs(pipeline="sentiment", limit=1)]
                == [r.run_id for r in await store.list_runs(pipeline="sentiment", limit=1)])
        assert ([columns(r) for r in reader.shard_group_runs(["nightly"])]
                == [r.model_dump() for r in await store.shard_group_runs(["nightly"])])
        ids = [r.run_id for r in expected_runs]
        expected_alerts = await store.alerts_for_runs(ids)
        quick_alerts = reader.alerts_for_runs(ids)
        assert {k: [columns(a) for a in v] for k, v in quick_alerts.items()} == \
               {k: [a.model_dump() for a in v] for k, v in expected_alerts.items()}
        names = ["sentiment", "triage", "invoices"]
        assert reader.pipeline_files(names) == await store.pipeline_files(names)
    finally:
        reader.close()
        await store.close()


def test_the_decoded_columns_are_the_models_json_datetime_and_boolean_columns() -> None:
    """A column added to models.py with a type the reader must decode fails here until the
    reader names it."""
    for model in (PipelineRun, MonitoringAlert):
        table = model.__table__
        kinds = {"json": set(), "datetime": set(), "bool": set()}
        for column in table.columns:
            kind = column.type
            if isinstance(kind, UTCDateTime):
                kinds["datetime"].add(column.name)
            elif isinstance(kind, JSON) or isinstance(getattr(kind, "impl", None), JSON):
                kinds["json"].add(column.name)
            elif isinstance(kind, Boolean):
                kinds["bool"].add(column.name)
        assert kinds == {"json": JSON_COLUMNS[table.name], "datetime": DATETIME_COLUMNS[table.name],
                         "bool": BOOL_COLUMNS[table.name]}, table.name


def test_loom_runs_prints_the_same_from_the_quick_reader_and_from_the_store(
        history: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    for arguments in (["runs", "--json"], ["runs"], ["runs", "--pipeline", "triage", "--json"]):
        assert cli.main(arguments) == 0
        quick = capsys.readouterr().out
        with monkeypatch.context() as patched:
            patched.setattr(history_reader, "open_history_reader", lambda url: None)
            assert cli.main(arguments) == 0
        assert capsys.readouterr().out == quick, arguments
    runs = json.loads(quick)
    assert runs[0]["kind"] == "shard_group" and len(runs[0]["runs"]) == 3


def test_what_the_reader_leaves_to_the_store(history: Path, tmp_path: Path) -> None:
    assert sqlite_path("postgresql://loom@db/loom") is None
    assert sqlite_path("sqlite:///a.db?mode=ro") is None
    assert sqlite_path("sqlite:///%7E/a.db") is None
    assert sqlite_path(f"sqlite:///{history}") == history
    assert open_history_reader(f"sqlite:///{tmp_path / 'none.db'}") is None  # the Store creates it
    assert not (tmp_path / "none.db").exists()
    with sqlite3.connect(history) as db:  # a store an older Loom wrote: the Store upgrades it
        db.execute("UPDATE alembic_version SET version_num = '0008'")
    assert open_history_reader(f"sqlite:///{history}") is None


def test_loom_runs_on_a_new_store_creates_it_as_before(loom_home: Path, capsys) -> None:
    assert cli.main(["runs"]) == 0
    assert "no runs yet" in capsys.readouterr().out
    assert (loom_home / "loom.db").is_file()
