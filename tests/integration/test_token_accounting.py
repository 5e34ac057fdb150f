"""Provider prompt-cache tokens and what caching saved, end to end: `loom --run --json`, the
summary people read, `loom runs` (table and --json), the store's rows, and a store at schema
0005 migrated with its data."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from core import cli
from core.cli.history import run_to_dict
from tests.pipelines import LOOPBACK_PRICE, reply, write_pipeline

LABELS = ["positive", "negative", "neutral"]
M = 1_000_000


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"review {i} " + "words " * 40, "expected": LABELS[i % 3],
             "reply": reply(LABELS[i % 3])} for i in range(count)]


def test_cache_reads_and_their_saving_in_json_summary_and_runs(tmp_path, llm_server, capsys,
                                                               loom_home):
    llm_server.cached_tokens = 40  # every call reads 40 prompt tokens from the provider's cache
    pipeline = write_pipeline(tmp_path / "p", rows=rows(6), base_url=llm_server.base_url)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--no-cache")
    assert code == 0, err
    summary = json.loads(out)
    tokens = summary["tokens"]
    assert set(tokens) == {"input", "output", "cache_read", "cache_write", "reasoning"}
    assert tokens["cache_read"] == 6 * 40 and tokens["cache_write"] == 0
    assert tokens["input"] > tokens["cache_read"]
    # gpt-4o-mini as priced by the pipeline: cache reads at 0.075 instead of 0.15
    saved = 6 * 40 * (LOOPBACK_PRICE["input"] - LOOPBACK_PRICE["cache_read"]) / M
    assert summary["savings_usd"] == {"prompt_cache": pytest.approx(saved)}
    assert summary["cost_saved_usd"] == pytest.approx(saved)
    cost = ((tokens["input"] - tokens["cache_read"]) * 0.15 + tokens["cache_read"] * 0.075
            + tokens["output"] * 0.60) / M
    assert summary["cost_usd"] == pytest.approx(cost, abs=1e-6)

    code, out, _ = run_cli(capsys, "runs", "--json")
    (run,) = json.loads(out)
    assert run["tokens"] == tokens and run["savings_usd"] == summary["savings_usd"]
    assert run["cost_saved_usd"] == pytest.approx(saved)
    code, out, _ = run_cli(capsys, "runs")
    assert "cache rd" in out and "saved" in out and "240" in out

    with sqlite3.connect(loom_home / "loom.db") as db:
        per_record = db.execute("SELECT cache_read_tokens, cache_write_tokens, reasoning_tokens, "
                                "prompt_cache_saved_usd FROM record_results").fetchall()
    assert [r[:3] for r in per_record] == [(40, 0, 0)] * 6
    assert sum(r[3] for r in per_record) == pytest.approx(saved)

    # The summary people read (stderr without --json).
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--no-cache")
    assert code == 0
    text = " ".join((out + err).split())
    assert "(240 cache read)" in text and "saved" in text and "by prompt caching" in text


def test_a_run_without_provider_caching_has_no_savings_entry(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows(2), base_url=llm_server.base_url)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["tokens"]["cache_read"] == 0 and summary["savings_usd"] == {}
    assert summary["cost_saved_usd"] is None


def test_a_local_server_without_a_price_costs_null_and_says_so(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows(2), base_url=llm_server.base_url,
                              transform={"price": None})
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["cost_usd"] is None
    assert "no price known for model gpt-4o-mini on openai_compatible" in err


# ---------------------------------------------------------------- the migration


def _insert(db: sqlite3.Connection, table: str, **values: Any) -> None:
    columns = ", ".join(values)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' for _ in values)})",
               list(values.values()))


async def test_a_store_at_0005_gains_the_token_columns_and_keeps_its_data(tmp_path: Path):
    from alembic import command
    from sqlalchemy import create_engine

    from core.store import Store
    from core.store.migrate import SCHEMA_HEAD, alembic_config

    path = tmp_path / "at0005.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
    engine.dispose()
    when = "2026-11-30 10:00:00.000000"
    with sqlite3.connect(path) as db:
        _insert(db, "pipelines", name="s", version="1", definition="{}", created_at=when,
                updated_at=when)
        _insert(db, "pipeline_runs", run_id="old", pipeline_name="s", pipeline_version="1",
                started_at=when, updated_at=when, finished_at=when, status="success",
                config="{}", context_hashes="{}", params="{}", options="{}", extracted=1,
                transformed=1, evaluated=1, loaded=1, quarantined=0, skipped=0, cost_usd=0.25,
                cost_by_stage="{}", cost_by_model="{}", input_tokens=100, output_tokens=10,
                llm_calls=1, cache_hits=0, warnings="[]", extra="{}", attempts=2,
                throttled=0, retries=0)
        _insert(db, "record_results", run_id="old", record_id="r0", ordinal=0, outcome="loaded",
                scores="[]", input_tokens=100, output_tokens=10, cost_usd=0.25, latency_s=0.1,
                cached=0, llm_calls=1, created_at=when)

    async with await Store.open(f"sqlite:///{path}") as store:
        run = await store.get_run("old")
        assert (run.cost_usd, run.input_tokens, run.attempts) == (0.25, 100, 2)
        assert (run.cache_read_tokens, run.cache_write_tokens, run.reasoning_tokens) == (0, 0, 0)
        assert run.savings_usd is None
        (row,) = await store.record_results("old")
        assert (row.input_tokens, row.cache_read_tokens, row.prompt_cache_saved_usd) == (100, 0, 0.0)
        assert run_to_dict(run)["tokens"] == {"input": 100, "output": 10, "cache_read": 0,
                                                  "cache_write": 0, "reasoning": 0}
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (SCHEMA_HEAD,)
        assert SCHEMA_HEAD == "0009"
