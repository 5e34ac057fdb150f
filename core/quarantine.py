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
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from core.config import LoomConfig
from core.connectors.base import Sink, build_row, id_column
from core.connectors.files import _FileSink
from core.connectors.registry import open_sink, redact_uri
from core.claims import Claim, ClaimState, Holder
from core.credentials import SecretResolver
from core.crashpoints import crash_point
from core.errors import LoadError, LoomError, UsageError
from core.processing import Runtime, resolve_secrets
from core.records import Outcome, Record, sum_costs
from core.run_pipeline import run_pipeline
from core.spec import LoadedSpec
from core.store import QuarantinedRecord, Store
from core.transform import load_output_schema


# The statuses that mean what each action asked for is so: approving a record that is
# already approved is done (exit 0), discarding it is not.
_DONE = {"approve": ("approved", "reprocessed"), "edit": ("approved", "reprocessed"),
         "reprocess": ("approved", "reprocessed"), "discard": ("discarded",)}
_STATUS = {"approve": "approved", "edit": "approved", "reprocess": "reprocessed",
           "discard": "discarded"}
_DOING = {"approve": "approved", "edit": "edited and approved", "reprocess": "reprocessed",
          "discard": "discarded"}


@dataclass(frozen=True)
class ActionResult:
    quarantine_id: int
    action: str  # approve | edit | reprocess | discard
    status: str  # the record's status afterwards
    loaded: bool
    message: str  # one line for people: what happened and where

    @property
    def done(self) -> bool:
        """The record is as the action asked (loaded, or already so)."""
        return self.loaded or self.status in _DONE.get(self.action, ())


def _actor() -> str | None:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return None


class QuarantineDesk:
    """The quarantine's actions, over one store.

    Every action claims its records first (core.claims, Store.claim_quarantined): of two
    processes acting on one record, one does and the other is told who is at it. What reaches a
    destination goes through the machinery runs use for exactly-once: the claim's id names the
    sink's staging file and load ledger, the output about to load is noted before the sink sees
    it, and the sink's commit token before it publishes. A claim whose holder died is taken
    over: the token (or the ledger) says whether the dead action loaded the record, which is
    then only noted in the store, never written again. A reprocess keeps the answer it paid for
    on the record until it is loaded or judged, so a killed reprocess does not pay twice.
    """

    def __init__(self, store: Store, config: LoomConfig, *, actor: str | None = None) -> None:
        self.store = store
        self.config = config
        self.actor = actor if actor is not None else _actor()
        self.holder = Holder.me().key
        self._loaded: dict[str, LoadedSpec] = {}  # run id -> its pipeline as the run ran it
        # Records whose load began to publish: their claim stays (with its token) if this
        # process stops before it noted the outcome, for the next action to settle.
        self._began: set[int] = set()

    # ------------------------------------------------------------ actions

    async def approve(self, ids: Sequence[int], *, note: str | None = None) -> list[ActionResult]:
        """Load each record's output as it is."""
        results: dict[int, ActionResult] = {}
        async with self._claimed(ids, "approve", results) as (claim_id, rows):
            ready = []
            for row in rows:
                if row.output is None:
                    results[row.number] = ActionResult(row.number, "approve", row.status, False,
                                                   "nothing to approve: the record has no output "
                                                   "(edit it, or reprocess it)")
                else:
                    ready.append((row, row.output))
            for row, message in await self._load(claim_id, ready, "approve", note):
                results[row.number] = message
        return [results[i] for i in _unique(ids)]

    async def approve_edited(self, quarantine_id: int, output: Any, *,
                             note: str | None = None) -> ActionResult:
        """Replace the output by hand, then load it. It must still match output_schema."""
        results: dict[int, ActionResult] = {}
        async with self._claimed([quarantine_id], "edit", results) as (claim_id, rows):
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
                    return ActionResult(row.number, "edit", row.status, False,
                                        f"the edited output does not match output_schema at "
                                        f"{where}: {error.message}")
            (_, result), = await self._load(claim_id, [(row, output)], "edit", note,
                                            loaded=loaded)
            return result

    async def reprocess(self, ids: Sequence[int]) -> list[ActionResult]:
        """Transform and evaluate again with the current prompt and model; load what passes."""
        results: dict[int, ActionResult] = {}
        async with self._claimed(ids, "reprocess", results) as (claim_id, rows):
            for _, group in _by_pipeline(rows, self._pipeline).items():
                loaded = group[0][1]
                warnings: list[str] = []
                # A fresh answer: the cached one is what got the record quarantined.
                resolver = SecretResolver()
                runtime = Runtime.build(loaded, config=self.config, cache=self.store,
                                        use_cache=False, resolver=resolver,
                                        on_warning=warnings.append)
                try:
                    passed = []
                    for row, _ in group:
                        answer = await self._answer(row, loaded, runtime)
                        if answer["outcome"] == Outcome.LOADED.value:
                            passed.append((row, answer))
                            continue
                        # Stored with the record again: masked as a run masks its reasons.
                        reason = resolver.redact(answer.get("reason") or "still fails")
                        await self.store.resolve_quarantined(
                            row.number, action="reprocess", status="open", actor=self.actor,
                            reason=reason, scores=answer["scores"], verdict=answer["verdict"],
                            details={**answer["details"], "stage": answer.get("stage")})
                        results[row.number] = ActionResult(row.number, "reprocess", "open", False,
                                                       f"still quarantined: {reason}")
                    for row, message in await self._load(
                            claim_id, [(row, answer["output"]) for row, answer in passed],
                            "reprocess", None, loaded=loaded,
                            extra={row.number: answer for row, answer in passed}):
                        results[row.number] = message
                finally:
                    await runtime.aclose()
        return [results[i] for i in _unique(ids)]

    async def discard(self, ids: Sequence[int], *, note: str | None = None) -> list[ActionResult]:
        results: dict[int, ActionResult] = {}
        async with self._claimed(ids, "discard", results) as (_, rows):
            for row in rows:
                await self.store.resolve_quarantined(row.number, action="discard",
                                                     status="discarded", note=note,
                                                     actor=self.actor)
                results[row.number] = ActionResult(row.number, "discard", "discarded", False,
                                                   "discarded")
        return [results[i] for i in _unique(ids)]

    # ------------------------------------------------------------ claims

    @contextlib.asynccontextmanager
    async def _claimed(self, ids: Sequence[int], action: str, results: dict[int, ActionResult]
                       ) -> AsyncIterator[tuple[str, list[QuarantinedRecord]]]:
        """Claim the records for `action`, settle what dead holders of them left, and yield
        (the claim's id, the open records this action now holds). Those the action did not
        resolve are let go at the end, unless their load began to publish."""
        wanted = _unique(ids)
        claim_id = uuid.uuid4().hex[:16]
        claims = await self.store.claim_quarantined(wanted, action, self.holder, claim_id)
        mine = [i for i in wanted if claims[i].state in (ClaimState.CLAIMED,
                                                          ClaimState.TAKEN_OVER)]
        try:
            missing = [i for i in wanted if claims[i].state is ClaimState.MISSING]
            if missing:
                raise UsageError(f"there is no quarantined record {missing[0]}")
            rows: list[QuarantinedRecord] = []
            taken: list[tuple[QuarantinedRecord, Claim]] = []
            for quarantine_id in wanted:
                claim = claims[quarantine_id]
                if claim.state not in (ClaimState.CLAIMED, ClaimState.TAKEN_OVER):
                    results[quarantine_id] = ActionResult(quarantine_id, action,
                                                          *_refusal(claim))
                    continue
                row = await self.store.get_quarantined(quarantine_id)
                if row is None:
                    raise UsageError(f"there is no quarantined record {quarantine_id}")
                if claim.state is ClaimState.TAKEN_OVER:
                    taken.append((row, claim))
                else:
                    rows.append(row)
            await self._prepare(rows + [row for row, _ in taken])
            rows.extend(await self._settle(taken, action, claim_id, results))
            rows.sort(key=lambda row: wanted.index(row.number))
            yield claim_id, rows
        finally:
            with contextlib.suppress(Exception):
                await self.store.drop_claims([i for i in mine if i not in self._began],
                                             self.holder)

    async def _settle(self, taken: list[tuple[QuarantinedRecord, Claim]], action: str,
                      claim_id: str, results: dict[int, ActionResult]) -> list[QuarantinedRecord]:
        """Records whose claim was taken over from a dead holder: those its action loaded
        (the sink's commit token or ledger says so) are noted as loaded, not written again;
        the others start afresh under this action's claim, and are returned."""
        again: list[QuarantinedRecord] = []
        groups: dict[tuple[str | None, str, Path, str], list[tuple[QuarantinedRecord, Claim]]] = {}
        for row, claim in taken:
            if claim.status not in _DOING or claim.status == "discard" or row.claim_output is None:
                again.append(row)  # the dead action had written nothing
                continue
            spec = self._pipeline(row)
            key = (claim.claim_id, claim.token or "", spec.path, spec.spec.load.destination)
            groups.setdefault(key, []).append((row, claim))
        for (dead_claim, token, _, destination), group in groups.items():
            spec = self._pipeline(group[0][0])
            try:
                target, _ = _identity_target(spec)
                sink = open_sink(resolve_secrets(target, SecretResolver()))
                await sink.open(f"quarantine-{dead_claim}")
                try:
                    landed = await _landed(sink, token or None, [r.record_id for r, _ in group])
                finally:
                    with contextlib.suppress(Exception):
                        await sink.abort()
            except LoomError as exc:
                for row, _ in group:  # the claim stays: the next action asks again
                    self._began.add(row.number)
                    results[row.number] = ActionResult(row.number, action, row.status, False,
                                                   f"not settled: an interrupted action may "
                                                   f"have loaded it, and {exc}")
                continue
            for row, claim in group:
                if row.record_id not in landed:
                    again.append(row)
                    continue
                dead_action = str(claim.status)
                status = _STATUS[dead_action]
                await self.store.resolve_quarantined(
                    row.number, action=dead_action, status=status, final_output=row.claim_output,
                    actor=self.actor, details={"destination": destination,
                                               "settled": "loaded by an interrupted action"},
                    **_judged(row.answer if dead_action == "reprocess" else None, row))
                loaded = status in _DONE[action]
                results[row.number] = ActionResult(
                    row.number, action, status, loaded,
                    f"{status}: loaded into {redact_uri(destination)} by an interrupted "
                    f"{dead_action} (not written again)" if loaded else
                    f"already {status} (by an interrupted {dead_action}); nothing done")
        if again:
            await self.store.restart_claim([row.number for row in again], self.holder, claim_id,
                                           action)
            again = [row for row in [await self.store.get_quarantined(r.number) for r in again]
                     if row is not None]
        return again

    async def _answer(self, row: QuarantinedRecord, loaded: LoadedSpec,
                      runtime: Runtime) -> dict[str, Any]:
        """The reprocess answer for a record: the one an interrupted reprocess already paid
        for (same prompt and model), else a new one, kept on the record before it is used."""
        prompt_hash, model = runtime.prompts.prompt_hash, loaded.spec.transform.model
        kept = row.answer
        if isinstance(kept, dict) and (kept.get("details") or {}).get("prompt_hash") == \
                prompt_hash and kept["details"].get("model") == model:
            return kept
        record = Record(id=row.record_id, data=row.input or {}, ordinal=row.ordinal)
        outcome = await runtime.processor.process(record)
        answer = {
            "outcome": outcome.outcome.value, "output": outcome.output,
            "reason": outcome.reason, "stage": str(outcome.stage) if outcome.stage else None,
            "scores": [score.to_dict() for score in outcome.scores],
            "verdict": outcome.verdict.to_dict() if outcome.verdict is not None else None,
            "details": {"cost_usd": sum_costs([c.cost_usd for c in outcome.calls]),
                        "prompt_hash": prompt_hash, "model": model}}
        await self.store.save_answer(row.number, self.holder, answer)
        crash_point("quarantine:answered")
        return answer

    # ------------------------------------------------------------ helpers

    def _pipeline(self, row: QuarantinedRecord) -> LoadedSpec:
        return self._loaded[row.run_id]

    async def _prepare(self, rows: Sequence[QuarantinedRecord]) -> None:
        """Load the pipeline of each row's run: its file as it is now, with the run's own
        --set overrides and shard (core.run_pipeline), as `--resume` would."""
        for row in rows:
            if row.run_id in self._loaded:
                continue
            run = await self.store.get_run(row.run_id)
            if run is None:
                raise LoomError(f"run {row.run_id} of quarantined record {row.number} is gone")
            self._loaded[row.run_id] = run_pipeline(run)

    async def _load(self, claim_id: str, items: list[tuple[QuarantinedRecord, Any]], action: str,
                    note: str | None, *, loaded: LoadedSpec | None = None,
                    extra: dict[int, dict[str, Any]] | None = None
                    ) -> list[tuple[QuarantinedRecord, ActionResult]]:
        """Write outputs to their pipelines' destinations (one commit per pipeline), then
        record the action. The sink is opened under the claim's id (its staging file, its
        ledger), the outputs are noted on the claim before the sink sees them and the commit
        token before it publishes: an action killed at any step is settled by the next."""
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
        status = _STATUS[action]
        for key, group in groups.items():
            spec = specs[key]
            destination = spec.spec.load.destination
            ids = [row.number for row, _ in group]
            await self.store.stage_claim({row.number: output for row, output in group}, self.holder)
            sink = None
            token: str | None = None
            try:
                target, rewrite = _identity_target(spec)
                sink = open_sink(resolve_secrets(target, SecretResolver()))
                await sink.open(f"quarantine-{claim_id}")
                rows = [build_row(spec, Record(id=row.record_id, data=row.input or {},
                                               ordinal=row.ordinal), output)
                        for row, output in group]
                record_ids = [row.record_id for row, _ in group]
                if target is not spec or rewrite is not None:
                    # One row per id: of two outputs for one record id, the last stands.
                    column = rewrite or _key_column(spec)
                    assert column is not None  # _identity_target refused a target without one
                    kept = {str(r.get(column)): (r, i) for r, i in zip(rows, record_ids)}
                    rows = [r for r, _ in kept.values()]
                    record_ids = [i for _, i in kept.values()]
                if rewrite is not None:
                    # Read under the destination's lock: another action or run committing
                    # between this read and our rename would lose its rows.
                    assert isinstance(sink, _FileSink)  # only files are rewritten (see above)
                    await sink.lock_destination()
                    await _rewrite_without(sink, target, rewrite,
                                           {str(r.get(rewrite)) for r in rows})
                ledger = sink.resume_policy == "ledger"
                if ledger:  # each batch is at the destination once written
                    self._began.update(ids)
                    crash_point("quarantine:committing")
                await sink.write_records(rows, record_ids)
                if not ledger:
                    token = await sink.prepare_commit()
                    await self.store.note_claim_token(ids, self.holder, token)
                    self._began.update(ids)
                    crash_point("quarantine:committing")
                    await sink.commit()
                crash_point("quarantine:committed")
            except LoomError as exc:
                landed: set[str] = set()
                if sink is not None:
                    if any(i in self._began for i in ids):
                        with contextlib.suppress(Exception):
                            landed = await _landed(sink, token, [r.record_id for r, _ in group])
                    with contextlib.suppress(Exception):
                        await sink.abort()
                failed = [row for row, _ in group if row.record_id not in landed]
                await self.store.drop_claims([row.number for row in failed], self.holder)
                self._began.difference_update(row.number for row in failed)
                for row in failed:
                    out.append((row, ActionResult(row.number, action, row.status, False,
                                                  f"not loaded: {exc}")))
                group = [(row, output) for row, output in group if row.record_id in landed]
                if not group:
                    continue
            for row, output in group:
                await self.store.resolve_quarantined(
                    row.number, action=action, status=status, final_output=output, note=note,
                    actor=self.actor, details={**((extra or {}).get(row.number, {}).get("details")
                                                  or {}), "destination": destination},
                    **_judged((extra or {}).get(row.number), row))
                self._began.discard(row.number)
                out.append((row, ActionResult(row.number, action, status, True,
                                              f"loaded into {redact_uri(destination)}")))
            if sink is not None and sink.resume_policy == "ledger":
                # The store holds the outcome: the sink may forget its ledger rows.
                with contextlib.suppress(LoomError):
                    await sink.commit()
        return out


def _refusal(claim: Claim) -> tuple[str, bool, str]:
    """(status, loaded, message) for a record this action could not claim."""
    if claim.state is ClaimState.RESOLVED:
        return str(claim.status), False, f"already {claim.status}; nothing done"
    if claim.state is ClaimState.HELD:
        doing = _DOING.get(str(claim.status), "acted on")
        return "open", False, f"being {doing} by {claim.holder}; nothing done"
    return "open", False, f"its run is being released by {claim.holder}; nothing done"


def _judged(answer: dict[str, Any] | None, row: QuarantinedRecord) -> dict[str, Any]:
    """What a reprocess that passed records: its scores and verdict now."""
    if not answer:
        return {}
    return {"scores": answer.get("scores"), "verdict": answer.get("verdict"),
            "reason": row.reason}


async def _landed(sink: Sink, token: str | None, record_ids: list[str]) -> set[str]:
    """Which of these records an earlier attempt under the sink's name put at the
    destination: all when its publish went through (`token`), those in its load ledger, or
    none (a "rewrite" sink's earlier parts are withdrawn, to be written again)."""
    if sink.resume_policy == "ledger":
        return set(record_ids) & await sink.written_ids()
    if sink.resume_policy == "rewrite":
        await sink.withdraw()
        return set()
    return set(record_ids) if token is not None and await sink.committed(token) else set()


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


async def _rewrite_without(sink: _FileSink, loaded: LoadedSpec, key: str, ids: set[str]) -> None:
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
