"""core.sharding: which shard a record belongs to, `I/N` parsing, destinations, groups."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import UsageError
from core.records import Record
from core.sharding import Shard, ShardGroup, bind_destination, shard_of, with_shard_index, worst_status
from tests.pipelines import write_pipeline
from core.spec import load_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_shard_of_an_id_never_changes() -> None:
    # Workers on different machines, Python versions and Loom releases must agree: these are
    # fixed values of BLAKE2b-64 modulo N. A change here splits one group's source differently.
    assert [shard_of(i, 4) for i in ("R001", "r0000", "review-42", "日本語")] == [1, 2, 2, 0]
    assert [shard_of(i, 1000) for i in ("R001", "reviews.csv:17", "a5f3c2e1d4b6a7c8")] == [
        153, 280, 162]


def test_the_same_id_lands_in_the_same_shard_in_another_process() -> None:
    ids = [f"id-{i}" for i in range(50)]
    code = ("import sys; from core.sharding import shard_of; "
            "print(','.join(str(shard_of(i, 7)) for i in sys.argv[1:]))")
    other = subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert other == ",".join(str(shard_of(i, 7)) for i in ids)


def test_ids_spread_evenly_over_the_shards() -> None:
    counts = Counter(shard_of(f"r{i:06d}", 4) for i in range(20_000))
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(4_500 < n < 5_500 for n in counts.values()), counts


def test_an_id_with_undecodable_bytes_still_has_a_shard() -> None:
    assert 0 <= shard_of("caf\udce9", 3) < 3


def test_shards_partition_a_batch_in_source_order() -> None:
    records = [Record(id=f"x{i}", data={}, ordinal=i) for i in range(100)]
    parts = [Shard(i, 3, "g").select(records) for i in range(3)]
    assert sorted(r.ordinal for part in parts for r in part) == list(range(100))
    for part in parts:
        assert [r.ordinal for r in part] == sorted(r.ordinal for r in part)
    assert Shard(0, 1, "g").select(records) is records


@pytest.mark.parametrize("text, index, count", [("0/4", 0, 4), ("3/4", 3, 4), (" 1 / 2 ", 1, 2),
                                                ("0/1", 0, 1)])
def test_parse_reads_i_of_n(text: str, index: int, count: int) -> None:
    shard = Shard.parse(text, "nightly")
    assert (shard.index, shard.count, shard.group, shard.label) == (index, count, "nightly",
                                                                    f"{index}/{count}")


@pytest.mark.parametrize("text, message", [
    ("4/4", "--shard 4/4: I must be between 0 and 3"),
    ("-1/4", "--shard -1/4: I must be between 0 and 3"),
    ("0/0", "--shard 0/0: N must be between 1 and 10000"),
    ("1/2/3", "--shard '1/2/3': expected I/N"),
    ("", "--shard '': expected I/N"),
])
def test_parse_refuses_what_is_not_a_shard(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        Shard.parse(text, "g")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_the_group_comes_from_airflow_when_not_given() -> None:
    environ = {"AIRFLOW_CTX_DAG_ID": "d", "AIRFLOW_CTX_TASK_ID": "t",
               "AIRFLOW_CTX_DAG_RUN_ID": "manual__2026"}
    assert Shard.parse("0/2", environ=environ).group == "d.t.manual__2026"
    assert Shard.parse("0/2", "explicit", environ=environ).group == "explicit"
    with pytest.raises(UsageError, match="needs --shard-group"):
        Shard.parse("0/2", environ={"AIRFLOW_CTX_DAG_ID": "d"})
    with pytest.raises(UsageError, match="group id is empty"):
        Shard.parse("0/2", "  ")


def test_bind_destination_fills_the_placeholder_in_the_spec_and_the_stored_config(tmp_path) -> None:
    loaded = load_spec(write_pipeline(tmp_path, rows=[{"id": "1"}],
                                      load={"destination": "jsonl://out/r-{shard}.jsonl"}))
    bound = bind_destination(loaded, Shard(2, 4, "g"))
    assert bound.spec.load.destination == "jsonl://out/r-2.jsonl"
    assert bound.raw["load"]["destination"] == "jsonl://out/r-2.jsonl"
    assert loaded.raw["load"]["destination"] == "jsonl://out/r-{shard}.jsonl"  # untouched
    assert bind_destination(loaded, None).spec.load.destination == "jsonl://out/r-0.jsonl"
    assert with_shard_index(loaded, 7).spec.load.destination == "jsonl://out/r-7.jsonl"


def test_bind_destination_allows_what_parallel_shards_cannot_clobber(tmp_path) -> None:
    def pipeline(**load: object):
        return load_spec(write_pipeline(tmp_path, rows=[{"id": "1"}], load=load))

    sqlite_append = pipeline(destination="sqlite://out/r.db", table="t", mode="append")
    assert bind_destination(sqlite_append, Shard(1, 4, "g")) is sqlite_append
    one_file = pipeline(destination="csv://out/r.csv")
    assert bind_destination(one_file, Shard(0, 1, "g")) is one_file  # one shard: nothing to clobber
    assert bind_destination(one_file, None) is one_file
    with pytest.raises(UsageError, match=r"put \{shard\} in the file name \(e.g. csv://out/r-\{shard\}.csv\)"):
        bind_destination(one_file, Shard(0, 2, "g"))
    with pytest.raises(UsageError, match="mode replace with 2 shards"):
        bind_destination(pipeline(destination="sqlite://out/r.db", table="t", mode="replace"),
                         Shard(0, 2, "g"))


@dataclass
class FakeRun:
    """The columns of a PipelineRun that a group reads."""

    run_id: str
    shard_index: int
    status: str = "success"
    minutes: int = 0
    extracted: int = 10
    loaded: int = 8
    quarantined: int = 2
    skipped: int = 0
    cost_usd: float | None = 0.5
    input_tokens: int = 100
    output_tokens: int = 10
    shard_group: str = "g"
    shard_count: int = 3
    pipeline_name: str = "p"

    @property
    def started_at(self) -> datetime:
        return T0 + timedelta(minutes=self.minutes)

    @property
    def finished_at(self) -> datetime | None:
        return None if self.status == "running" else self.started_at + timedelta(seconds=30)


def test_a_group_sums_the_newest_run_of_each_shard() -> None:
    group = ShardGroup.of([
        FakeRun("a", 0), FakeRun("b", 1, status="failed", loaded=0, quarantined=0, skipped=10),
        FakeRun("c", 2, minutes=1, cost_usd=0.25), FakeRun("d", 1, minutes=5, loaded=9, quarantined=1)])
    assert [r.run_id for r in group.runs] == ["d", "c", "b", "a"]  # newest first (ties by id)
    assert [r.run_id for r in group.counted] == ["a", "d", "c"]  # the retry replaces "b"
    assert group.status == "success" and group.missing == []
    assert (group.total("extracted"), group.total("loaded"), group.total("quarantined"),
            group.total("skipped")) == (30, 25, 5, 0)
    assert group.cost_usd == 1.25
    assert group.rejection_rate == pytest.approx(5 / 30)
    assert group.started_at == T0
    assert group.duration_s == 5 * 60 + 30


def test_a_group_shows_its_worst_status_and_is_not_done_while_shards_are_missing() -> None:
    assert worst_status(["success", "partial", "failed"]) == "failed"
    assert worst_status(["success", "running"]) == "running"
    assert worst_status(["partial", "cancelled"]) == "cancelled"
    partial = ShardGroup.of([FakeRun("a", 0), FakeRun("b", 1, status="partial"), FakeRun("c", 2)])
    assert partial.status == "partial"
    unfinished = ShardGroup.of([FakeRun("a", 0), FakeRun("b", 1)])
    assert unfinished.missing == [2] and unfinished.status == "running"
    assert unfinished.finished_at is None and unfinished.duration_s is None
    unknown = ShardGroup.of([FakeRun("a", 0), FakeRun("b", 1, cost_usd=None), FakeRun("c", 2)])
    assert unknown.cost_usd is None  # a model without a price: the sum is unknown, not low


async def test_a_store_from_before_shard_groups_upgrades_in_place(tmp_path) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from core.sharding import Shard as S
    from core.store import Store
    from core.store.migrate import alembic_config
    from tests.unit.store_records import run_start

    path = tmp_path / "loom.db"
    store = await Store.open(f"sqlite:///{path}")
    await store.start_run(run_start("before"))
    await store.close()
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:  # back to the schema of a Loom without shard groups
            command.downgrade(alembic_config(conn), "0001")
            columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(pipeline_runs)")}
            assert "shard_group" not in columns
    finally:
        engine.dispose()

    store = await Store.open(f"sqlite:///{path}")  # upgrades again
    try:
        old = await store.get_run("before")
        assert old is not None and old.shard_group is None and old.shard_index is None
        start = run_start("after")
        start.shard = S(1, 2, "g")
        await store.start_run(start)
        (new,) = await store.shard_group_runs(["g"])
        assert (new.run_id, new.shard_group, new.shard_index, new.shard_count) == ("after", "g", 1, 2)
    finally:
        await store.close()
