"""Acting on quarantined records: approve, edit then approve, reprocess, discard.

Each action works on the pipeline as it is now (its file at the path the run recorded): an
approved record loads into today's destination, a reprocessed one goes through today's prompt
and model. A `replace` destination holds one row per record id, and keeps it so: an approved
record's row takes the place of the row with its id (a database upserts on the id column, a file
is rewritten whole, atomically), never a second row beside it; a destination that cannot (S3) is
refused in one line. Every action is stored with its time, whatever it decided. Only `open` records can
be acted on; asking again about a resolved one changes nothing and says so.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import getpass
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema

from core.config import LoomConfig
from core.connectors.base import build_row, id_column
from core.connectors.registry import open_sink, redact_uri
from core.credentials import SecretResolver
from core.crashpoints import crash_point
from core.errors import LoadError, LoomError, UsageError
from core.processing import Runtime, resolve_secrets
from core.records import Outcome, Record, sum_costs
from core.sharding import with_shard_index
from core.spec import LoadedSpec, load_spec
from core.store import QuarantinedRecord, Store
from core.transform import load_output_schema


@dataclass(frozen=True)
class ActionResult:
    quarantine_id: int
    action: str  # approve | edit | reprocess | discard
    status: str  # the record's status afterwards
    loaded: bool
    message: str  # one line for people: what happened and where


def _actor() -> str | None:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return None


class QuarantineDesk:
    """The quarantine's actions, over one store."""

    def __init__(self, store: Store, config: LoomConfig, *, actor: str | None = None) -> None:
        self.store = store
        self.config = config
        self.actor = actor if actor is not None else _actor()
        self._loaded: dict[str, LoadedSpec] = {}  # run id -> its pipeline as it is now

    # ------------------------------------------------------------ actions

    async def approve(self, ids: Sequence[int], *, note: str | None = None) -> list[ActionResult]:
        """Load each record's output as it is."""
        results: dict[int, ActionResult] = {}
        rows = await self._open_rows(ids, "approve", results)
        ready = []
        for row in rows:
            if row.output is None:
                results[row.id] = ActionResult(row.id, "approve", row.status, False,
                                               "nothing to approve: the record has no output "
                                               "(edit it, or reprocess it)")
            else:
                ready.append((row, row.output))
        for row, message in await self._load(ready, "approve", note):
            results[row.id] = message
        return [results[i] for i in _unique(ids)]

    async def approve_edited(self, quarantine_id: int, output: Any, *,
                             note: str | None = None) -> ActionResult:
        """Replace the output by hand, then load it. It must still match output_schema."""
        results: dict[int, ActionResult] = {}
        rows = await self._open_rows([quarantine_id], "edit", results)
        if not rows:
            return results[quarantine_id]
        row = rows[0]
        loaded = self._pipeline(row)
        schema = load_output_schema(loaded)
        if schema is not None:
            error = jsonschema.exceptions.best_match(
                jsonschema.validators.validator_for(schema)(schema).iter_errors(output))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return ActionResult(row.id, "edit", row.status, False,
                                    f"the edited output does not match output_schema at {where}: "
                                    f"{error.message}")
        (_, result), = await self._load([(row, output)], "edit", note, loaded=loaded)
        return result

    async def reprocess(self, ids: Sequence[int]) -> list[ActionResult]:
        """Transform and evaluate again with the current prompt and model; load what passes."""
        results: dict[int, ActionResult] = {}
        rows = await self._open_rows(ids, "reprocess", results)
        for _, group in _by_pipeline(rows, self._pipeline).items():
            loaded = group[0][1]
            warnings: list[str] = []
            # A fresh answer: the cached one is what got the record quarantined.
            runtime = Runtime.build(loaded, config=self.config, cache=self.store, use_cache=False,
                                    resolver=SecretResolver(), on_warning=warnings.append)
            try:
                passed = []
                for row, _ in group:
                    record = Record(id=row.record_id, data=row.input or {}, ordinal=row.ordinal)
                    outcome = await runtime.processor.process(record)
                    crash_point("quarantine:answered")
                    cost = sum_costs([c.cost_usd for c in outcome.calls])
                    details = {"cost_usd": cost, "prompt_hash": runtime.prompts.prompt_hash,
                               "model": loaded.spec.transform.model}
                    if outcome.outcome is Outcome.LOADED:
                        passed.append((row, outcome, details))
                        continue
                    reason = outcome.reason or "still fails"
                    await self.store.resolve_quarantined(
                        row.id, action="reprocess", status="open", actor=self.actor,
                        reason=reason, scores=outcome.scores, verdict=outcome.verdict,
                        details={**details, "stage": str(outcome.stage)})
                    results[row.id] = ActionResult(row.id, "reprocess", "open", False,
                                                   f"still quarantined: {reason}")
                for row, message in await self._load(
                        [(row, outcome.output) for row, outcome, _ in passed], "reprocess", None,
                        loaded=loaded,
                        extra={row.id: (outcome, details) for row, outcome, details in passed}):
                    results[row.id] = message
            finally:
                await runtime.aclose()
        return [results[i] for i in _unique(ids)]

    async def discard(self, ids: Sequence[int], *, note: str | None = None) -> list[ActionResult]:
        results: dict[int, ActionResult] = {}
        for row in await self._open_rows(ids, "discard", results):
            await self.store.resolve_quarantined(row.id, action="discard", status="discarded",
                                                 note=note, actor=self.actor)
            results[row.id] = ActionResult(row.id, "discard", "discarded", False, "discarded")
        return [results[i] for i in _unique(ids)]

    # ------------------------------------------------------------ helpers

    async def _open_rows(self, ids: Sequence[int], action: str,
                         results: dict[int, ActionResult]) -> list[QuarantinedRecord]:
        rows = []
        for quarantine_id in _unique(ids):
            row = await self.store.get_quarantined(quarantine_id)
            if row is None:
                raise UsageError(f"there is no quarantined record {quarantine_id}")
            if row.status != "open":
                results[row.id] = ActionResult(row.id, action, row.status, False,
                                               f"already {row.status}; nothing done")
                continue
            rows.append(row)
        await self._prepare(rows)
        return rows

    def _pipeline(self, row: QuarantinedRecord) -> LoadedSpec:
        return self._loaded[row.run_id]

    async def _prepare(self, rows: Sequence[QuarantinedRecord]) -> None:
        """Load the pipeline file of each row's run, as it is now."""
        for row in rows:
            if row.run_id in self._loaded:
                continue
            run = await self.store.get_run(row.run_id)
            if run is None:
                raise LoomError(f"run {row.run_id} of quarantined record {row.id} is gone")
            loaded = load_spec(Path(run.pipeline_path))
            # A shard run loaded into its own `{shard}` destination: so do its approvals.
            self._loaded[row.run_id] = with_shard_index(loaded, run.shard_index or 0)

    async def _load(self, items: list[tuple[QuarantinedRecord, Any]], action: str,
                    note: str | None, *, loaded: LoadedSpec | None = None,
                    extra: dict[int, tuple[Any, dict[str, Any]]] | None = None
                    ) -> list[tuple[QuarantinedRecord, ActionResult]]:
        """Write outputs to their pipelines' destinations (one commit per pipeline), then
        record the action."""
        if not items:
            return []
        out = []
        groups: dict[tuple[Path, str], list[tuple[QuarantinedRecord, Any]]] = {}
        specs: dict[tuple[Path, str], LoadedSpec] = {}
        for row, output in items:
            spec = loaded or self._pipeline(row)
            key = (spec.path, spec.spec.load.destination)
            groups.setdefault(key, []).append((row, output))
            specs[key] = spec
        status = "reprocessed" if action == "reprocess" else "approved"
        for key, group in groups.items():
            spec = specs[key]
            destination = spec.spec.load.destination
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            sink = None
            try:
                target, rewrite = _identity_target(spec)
                sink = open_sink(resolve_secrets(target, SecretResolver()))
                await sink.open(f"quarantine-{action}-{stamp}")
                rows = [build_row(spec, Record(id=row.record_id, data=row.input or {},
                                               ordinal=row.ordinal), output)
                        for row, output in group]
                if target is not spec or rewrite is not None:
                    # One row per id: of two actions on one record id at once, the last stands.
                    column = rewrite or _key_column(spec)
                    rows = list({str(r.get(column)): r for r in rows}.values())
                if rewrite is not None:
                    await _rewrite_without(sink, target, rewrite,
                                           {str(r.get(rewrite)) for r in rows})
                await sink.write(rows)
                crash_point("quarantine:committing")
                await sink.commit()
                crash_point("quarantine:committed")
            except LoomError as exc:
                if sink is not None:
                    with contextlib.suppress(Exception):
                        await sink.abort()
                for row, _ in group:
                    out.append((row, ActionResult(row.id, action, row.status, False,
                                                  f"not loaded: {exc}")))
                continue
            for row, output in group:
                outcome, details = (extra or {}).get(row.id, (None, None))
                await self.store.resolve_quarantined(
                    row.id, action=action, status=status, final_output=output, note=note,
                    actor=self.actor, details={**(details or {}), "destination": destination},
                    **({"scores": outcome.scores, "verdict": outcome.verdict,
                        "reason": row.reason} if outcome is not None else {}))
                out.append((row, ActionResult(row.id, action, status, True,
                                              f"loaded into {destination}")))
        return out


# ---------------------------------------------------------------- the destination's identity


def _key_column(loaded: LoadedSpec) -> str | None:
    """The column that holds a record's id in the rows the pipeline writes, or None."""
    fields = loaded.spec.load.fields
    if not fields:
        return id_column(loaded)
    id_field = loaded.spec.extract.id_field
    for column, path in fields.items():
        if path == "id" or (id_field and path == f"input.{id_field}"):
            return column
    return None


def _with_load(loaded: LoadedSpec, **updates: Any) -> LoadedSpec:
    """The pipeline with some load: keys changed, in its spec and its raw config alike."""
    raw = copy.deepcopy(loaded.raw)
    raw.setdefault("load", {}).update(updates)
    spec = loaded.spec.model_copy(update={"load": loaded.spec.load.model_copy(update=updates)})
    return LoadedSpec(spec=spec, path=loaded.path, raw=raw)


def _identity_target(loaded: LoadedSpec) -> tuple[LoadedSpec, str | None]:
    """How an approved record goes into its pipeline's destination without a second row for
    its id: the pipeline to open the sink with, and for a file, the id column to rewrite it
    by. A `replace` destination holds one row per id: a database upserts on the id column, a
    file is rewritten whole with the record's row in place of the old one. An `append` or
    `upsert` destination is written as its runs write it. Raises LoadError (one line) for a
    destination that cannot replace one record's row."""
    load = loaded.spec.load
    if load.mode != "replace":
        return loaded, None
    where = redact_uri(load.destination)
    key = _key_column(loaded)
    if key is None:
        raise LoadError(f"{where} is replaced by each run and load.fields writes no column for "
                        f"the record id (add one: `id`): the record's row cannot be found to "
                        f"replace it, so nothing was loaded")
    scheme = load.destination.split("://", 1)[0].lower()
    if scheme in ("sqlite", "postgres", "postgresql"):
        return _with_load(loaded, mode="upsert", key=key), None
    if scheme in ("csv", "jsonl", "json"):
        return loaded, key
    raise LoadError(f"{where}: an {scheme}:// destination cannot replace one record's row in "
                    f"place; nothing was loaded (run the pipeline again to include it)")


async def _rewrite_without(sink: Any, loaded: LoadedSpec, key: str, ids: set[str]) -> None:
    """A `replace` file destination, staged anew: every row it holds but those with `ids`."""
    path = Path(sink.path)
    if not path.is_file():
        return
    kind = loaded.spec.load.destination.split("://", 1)[0].lower()
    batch: list[dict[str, Any]] = []
    for row in _file_rows(path, kind):
        if str(row.get(key)) in ids:
            continue
        batch.append(row)
        if len(batch) >= 1000:
            await sink.write(batch)
            batch = []
    if batch:
        await sink.write(batch)


def _file_rows(path: Path, kind: str) -> Iterator[dict[str, Any]]:
    """The rows a Loom file destination holds, as Loom wrote them."""
    try:
        if kind == "csv":
            with path.open(newline="", encoding="utf-8") as handle:
                yield from csv.DictReader(handle)
        elif kind == "jsonl":
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)
        else:
            with path.open(encoding="utf-8") as handle:
                rows = json.load(handle)
            yield from (rows if isinstance(rows, list) else [])
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LoadError(f"{kind} destination {path}: cannot read it to replace the record's "
                        f"row: {exc}") from None


def _unique(ids: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


def _by_pipeline(rows: list[QuarantinedRecord], pipeline: Any
                 ) -> dict[tuple[Path, str], list[tuple[QuarantinedRecord, LoadedSpec]]]:
    """Rows by pipeline file and destination (shard runs of one file load to their own)."""
    groups: dict[tuple[Path, str], list[tuple[QuarantinedRecord, LoadedSpec]]] = {}
    for row in rows:
        loaded = pipeline(row)
        groups.setdefault((loaded.path, loaded.spec.load.destination), []).append((row, loaded))
    return groups
