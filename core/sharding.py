"""Splitting one source between N workers: `loom --run PIPELINE --shard I/N`.

Each worker reads the whole source and keeps only the records whose id hashes to its shard, so
N processes on N machines split the work without talking to each other: no coordinator, no
queue, no lock. Every record has exactly one id (the `id_field`, a hash of the row, or where an
unreadable row came from), and every id has exactly one shard, so every record of the source
lands in exactly one shard run — records with extract errors included. Records of other shards
are not this run's records at all: they are neither extracted nor skipped in its counts.

Shards are numbered from 0, like Airflow's map indexes: `--shard {{ ti.map_index }}/4`.

The N runs of one split share a group id (`--shard-group`), stored with each run, so that the
history can link them and `loom runs` can sum them. The id must come from outside, because the
workers do not talk: an explicit name, or the Airflow task a mapped worker belongs to.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.connectors.registry import parse_uri
from core.errors import UsageError
from core.run_status import RunStatus

if TYPE_CHECKING:
    from core.records import Record
    from core.spec import LoadedSpec

PLACEHOLDER = "{shard}"
MAX_SHARDS = 10_000
_SHARD_TEXT = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")
# What Airflow exports to a task's processes (BashOperator and friends): a mapped task's
# instances share the DAG, the task and the DAG run, which is exactly one shard group.
_AIRFLOW_VARS = ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_TASK_ID", "AIRFLOW_CTX_DAG_RUN_ID")
_MAX_SHARDS = 1_000_000  # a count the store's integer columns hold, with room to spare


def shard_of(record_id: str, count: int) -> int:
    """The shard a record id belongs to: the first 8 bytes of its BLAKE2b digest, modulo N.

    Stable across processes, machines and Python versions (Python's own hash() is salted per
    process, so N workers would each disagree). `surrogatepass` keeps ids read from files with
    undecodable bytes hashable.
    """
    digest = hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` (0-based) of `count`, in the group `group`."""

    index: int
    count: int
    group: str

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise UsageError(f"--shard {self.label}: N must be between 1 and {MAX_SHARDS}")
        if not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.label}: I must be between 0 and {self.count - 1} "
                             f"(shards are numbered from 0, like Airflow map indexes)")
        if not self.group or not self.group.strip():
            raise UsageError("--shard-group: the group id is empty")

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, records: list["Record"]) -> list["Record"]:
        """This shard's records of a batch, in source order."""
        if self.count == 1:
            return records
        index, count = self.index, self.count
        return [r for r in records if shard_of(r.id, count) == index]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count, "group": self.group}

    @classmethod
    def parse(cls, text: str, group: str | None = None,
              environ: Mapping[str, str] | None = None) -> "Shard":
        """`I/N` as typed on the command line. Without `group`, the Airflow task's identity
        when running under Airflow; otherwise a group must be given."""
        match = _SHARD_TEXT.fullmatch(text or "")
        if match is None:
            raise UsageError(f"--shard {text!r}: expected I/N, e.g. --shard 0/4 "
                             f"(shard I of N, numbered from 0)")
        index, count = int(match.group(1)), int(match.group(2))
        if count > _MAX_SHARDS:
            raise UsageError(f"--shard {text!r}: at most {_MAX_SHARDS:,} shards")
        if group is None:
            group = airflow_group(os.environ if environ is None else environ)
        if group is None:
            raise UsageError(f"--shard {index}/{count} needs --shard-group NAME, the same for the "
                             f"{count} runs that split the source (e.g. the date of the batch)")
        return cls(index, count, group.strip())


def airflow_group(environ: Mapping[str, str]) -> str | None:
    """The shard group of a mapped Airflow task, from the variables Airflow gives its tasks."""
    values = [environ.get(name) for name in _AIRFLOW_VARS]
    if not all(values):
        return None
    return ".".join(v for v in values if v)


# ---------------------------------------------------------------- destinations


def bind_destination(loaded: "LoadedSpec", shard: Shard | None) -> "LoadedSpec":
    """The pipeline this shard runs: `{shard}` in `load.destination` becomes the shard index
    (0 for a run that is not sharded), and a destination the shards would clobber is refused.

    File destinations are rewritten whole at commit (a temp file renamed into place; `append`
    copies the old file first), so two shards writing one file would each replace the other's
    rows: they need `{shard}` in the file name. A SQL table takes concurrent `append` and
    `upsert` batches safely, but `replace` swaps the whole table, so it needs `{shard}` too.
    """
    destination = loaded.spec.load.destination
    if shard is not None and shard.count > 1 and PLACEHOLDER not in destination:
        uri = parse_uri(destination)
        mode = loaded.spec.load.mode
        if uri.is_local_file:
            raise UsageError(
                f"load.destination {destination}: {shard.count} shards would overwrite each "
                f"other's file; put {PLACEHOLDER} in the file name (e.g. "
                f"{_suggest(destination)}) or load into a database table")
        if not (uri.is_sql and mode in ("append", "upsert")):
            raise UsageError(
                f"load.destination {destination}: mode {mode} with {shard.count} shards: each "
                f"shard would replace the rows the others loaded; use mode append or upsert, or "
                f"put {PLACEHOLDER} in the destination")
    return with_shard_index(loaded, shard.index if shard is not None else 0)


def with_shard_index(loaded: "LoadedSpec", index: int) -> "LoadedSpec":
    """The pipeline with `{shard}` in its destination replaced by `index` (unchanged when the
    destination has no placeholder). The raw config changes too: it is what the run stores,
    and what connections are made from once secrets are resolved."""
    from core.spec import LoadedSpec, PipelineSpec

    destination = loaded.spec.load.destination
    if PLACEHOLDER not in destination:
        return loaded
    bound = destination.replace(PLACEHOLDER, str(index))
    raw = copy.deepcopy(loaded.raw)
    raw["load"]["destination"] = bound
    spec = loaded.spec.model_copy(update={"load": loaded.spec.load.model_copy(
        update={"destination": bound})})
    assert isinstance(spec, PipelineSpec)
    return LoadedSpec(spec=spec, path=loaded.path, raw=raw)


def _suggest(destination: str) -> str:
    head, dot, suffix = destination.rpartition(".")
    if not dot or "/" in suffix:
        return destination + "-" + PLACEHOLDER
    return f"{head}-{PLACEHOLDER}.{suffix}"


# ---------------------------------------------------------------- groups in the history

# Worst first: the status a group shows is its worst member's.
_SEVERITY = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PARTIAL, RunStatus.RUNNING,
             RunStatus.SUCCESS)


def worst_status(statuses: list[str]) -> str:
    rank = {status: i for i, status in enumerate(_SEVERITY)}
    return min(statuses, key=lambda s: rank.get(s, 0)) if statuses else RunStatus.RUNNING


@dataclass(frozen=True)
class ShardGroup:
    """The runs of one shard group, as the history shows them.

    `runs` is every run of the group, newest first, retries included; the totals count the
    newest run of each shard index only, so a retried shard replaces its failed attempt
    instead of counting twice.
    """

    group: str
    pipeline: str
    shard_count: int
    runs: tuple[Any, ...]  # core.store.PipelineRun

    @classmethod
    def of(cls, runs: list[Any]) -> "ShardGroup":
        ordered = sorted(runs, key=lambda r: (r.started_at, r.run_id), reverse=True)
        first = ordered[0]
        return cls(group=first.shard_group, pipeline=first.pipeline_name,
                   shard_count=max(r.shard_count or 1 for r in ordered), runs=tuple(ordered))

    @property
    def counted(self) -> list[Any]:
        """The newest run of each shard index, by index."""
        newest: dict[int, Any] = {}
        for run in self.runs:  # newest first: the first seen of an index wins
            newest.setdefault(run.shard_index or 0, run)
        return [newest[i] for i in sorted(newest)]

    @property
    def missing(self) -> list[int]:
        """Shard indexes that have not run (yet)."""
        seen = {run.shard_index or 0 for run in self.runs}
        return [i for i in range(self.shard_count) if i not in seen]

    @property
    def status(self) -> str:
        status = worst_status([run.status for run in self.counted])
        if self.missing and status == RunStatus.SUCCESS:
            return RunStatus.RUNNING  # not every shard has reported: the group is not done
        return status

    def total(self, name: str) -> int:
        return sum(getattr(run, name) or 0 for run in self.counted)

    @property
    def cost_usd(self) -> float | None:
        costs = [run.cost_usd for run in self.counted]
        return None if any(c is None for c in costs) else round(sum(costs), 6)

    @property
    def started_at(self) -> datetime:
        started: datetime = min(run.started_at for run in self.counted)
        return started

    @property
    def finished_at(self) -> datetime | None:
        ends = [run.finished_at for run in self.counted]
        return None if self.missing or any(e is None for e in ends) else max(ends)

    @property
    def duration_s(self) -> float | None:
        """Wall-clock time from the first shard's start to the last one's end."""
        end = self.finished_at
        return None if end is None else (end - self.started_at).total_seconds()

    @property
    def rejection_rate(self) -> float:
        loaded, quarantined = self.total("loaded"), self.total("quarantined")
        return quarantined / (loaded + quarantined) if loaded + quarantined else 0.0


def gather_groups(runs: Sequence[Any], group_runs: Iterable[Any]
                  ) -> dict[tuple[str, str], ShardGroup]:
    """The shard groups `runs` belong to, each whole, by (pipeline, group). `group_runs` is every
    run of those groups (also those not in `runs`), as the store's `shard_group_runs` gives them."""
    wanted = {(run.pipeline_name, run.shard_group) for run in runs if run.shard_group is not None}
    members: dict[tuple[str, str], list[Any]] = {}
    for run in group_runs:
        key = (run.pipeline_name, run.shard_group)
        if key in wanted:
            members.setdefault(key, []).append(run)
    return {key: ShardGroup.of(found) for key, found in members.items()}


def history_entries(runs: Sequence[Any], group_runs: Iterable[Any]) -> list[Any]:
    """A page of history: `runs` (newest first) with the runs of each shard group gathered into
    one `ShardGroup`, placed where its newest run is (`group_runs`: as for gather_groups)."""
    groups = gather_groups(runs, group_runs)
    entries: list[Any] = []
    shown: set[tuple[str, str]] = set()
    for run in runs:
        if run.shard_group is None:
            entries.append(run)
            continue
        key = (run.pipeline_name, run.shard_group)
        if key not in shown:
            shown.add(key)
            entries.append(groups[key])
    return entries


def page_groups(runs: Sequence[Any]) -> list[str]:
    """The shard groups a page of runs touches, for `shard_group_runs`."""
    return sorted({run.shard_group for run in runs if run.shard_group is not None})
