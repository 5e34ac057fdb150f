"""A `replace` destination rebuilt for a run keeps the records approved from the run's
quarantine, each once (core.approved): the run's own commit, a `--resume` of it, and `loom
release`, for every sink that replaces (CSV, JSON Lines, JSON, SQLite, PostgreSQL).

(The kill -9 version is tests/adversary/test_exactly_once_attacks.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from core import cli
from core.api import Workspace
from core.engine import RunController, RunOptions
from core.events import BatchLoaded, Progress, RunFinished
from tests.pipelines import reply, write_pipeline

FILE_SINKS = {"csv": "csv://out/results.csv", "jsonl": "jsonl://out/results.jsonl",
              "json": "json://out/results.json", "sqlite": "sqlite://out/results.db"}


def rows(count: int) -> list[dict[str, str]]:
    # Every third record's answer disagrees with the truth: quarantined at evaluate.
    return [{"id": f"r{i:03d}", "text": f"text {i}", "expected": "positive",
             "reply": reply("negative" if i % 3 == 0 else "positive")} for i in range(count)]


def passing(source: list[dict[str, str]]) -> set[str]:
    return {row["id"] for row in source if "negative" not in row["reply"]}


class Destination:
    """A replace destination under test, and the record ids it holds (with their rows)."""

    def __init__(self, folder: Path, kind: str, pg_database: Any = None) -> None:
        self.folder, self.kind, self.pg = folder, kind, pg_database
        if kind == "postgres":
            self.load = {"destination": pg_database.url, "table": "scores", "mode": "replace"}
        else:
            self.load = {"destination": FILE_SINKS[kind], "mode": "replace",
                         **({"table": "scores"} if kind == "sqlite" else {})}

    def rows(self) -> list[dict[str, Any]]:
        path = self.folder / FILE_SINKS.get(self.kind, "x://").split("://", 1)[1]
        if self.kind == "postgres":
            return [{"id": line[0], "sentiment": line[1]} for line in
                    self.pg.rows('SELECT "id", "sentiment" FROM "scores" ORDER BY 1')]
        if not path.exists():
            return []
        if self.kind == "csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        if self.kind == "jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line]
        if self.kind == "json":
            return json.loads(path.read_text())
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute('SELECT * FROM "scores"')]

    def ids(self) -> Counter[str]:
        return Counter(str(row["id"]) for row in self.rows())

    def sentiment(self, record_id: str) -> str:
        return next(str(row["sentiment"]) for row in self.rows() if str(row["id"]) == record_id)


async def cli_quiet(*args: str) -> tuple[int, str, str]:
    """`loom ARGS`, in a thread of its own (the CLI runs its own event loop)."""
    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
        return code, out.getvalue(), err.getvalue()
    return await asyncio.to_thread(run)


async def cancelled_run(workspace: Workspace, pipeline: Path, answered: int, server: Any
                        ) -> Any:
    """Run the pipeline and cancel it once `answered` records have their answer: the replace
    destination is untouched, the records left are skipped for --resume."""
    controller = RunController()
    summary = None
    server.latency_s = 0.02  # slow enough that the cancel comes before the end
    async for event in workspace.run(workspace.load(pipeline, []), RunOptions(),
                                     controller=controller):
        if isinstance(event, Progress) and event.transformed >= answered:
            controller.cancel()
        if isinstance(event, RunFinished):
            summary = event.summary
    server.latency_s = 0.0
    assert summary is not None and summary.status == "cancelled" and summary.skipped > 0
    assert summary.quarantined >= 2
    return summary


async def approve_two(workspace: Workspace, run_id: str, destination: Destination
                      ) -> dict[str, str]:
    """Approve one quarantined record of the run as it is, and another edited; returns the
    sentiment each now has at the destination, by record id."""
    items = await workspace.quarantine(run_id=run_id)
    first, second = items[0], items[1]
    [plain] = await workspace.approve([first.id])
    edited = await workspace.approve_edited(second.id, {"sentiment": "neutral"})
    assert plain.loaded and edited.loaded, (plain.message, edited.message)
    approved = {first.record_id: "negative", second.record_id: "neutral"}
    assert {r: destination.sentiment(r) for r in approved} == approved
    return approved


async def resume_keeps_the_approved(tmp_path: Path, server: Any, destination: Destination
                                    ) -> None:
    source = rows(60)
    pipeline = write_pipeline(destination.folder, rows=source, base_url=server.base_url,
                              transform={"concurrency": 2},
                              evaluate={"max_rejection_rate": 0.5}, load=destination.load)
    async with Workspace(destination.folder) as workspace:
        summary = await cancelled_run(workspace, pipeline, 12, server)
        approved = await approve_two(workspace, summary.run_id, destination)
    code, out, err = await cli_quiet("--run", str(pipeline), "--resume", "--json")
    assert code == 0, err
    assert json.loads(out)["records"]["loaded"] == len(passing(source))
    held = destination.ids()
    assert held == Counter(passing(source) | set(approved)), "each record once, approved too"
    assert {r: destination.sentiment(r) for r in approved} == approved


@pytest.mark.parametrize("kind", sorted(FILE_SINKS))
async def test_a_resumed_replace_run_keeps_the_records_approved_from_it(tmp_path, llm_server,
                                                                        kind):
    await resume_keeps_the_approved(tmp_path, llm_server, Destination(tmp_path / "p", kind))


@pytest.mark.postgres
async def test_a_resumed_postgres_replace_run_keeps_the_records_approved_from_it(
        tmp_path, llm_server, pg_database):
    await resume_keeps_the_approved(tmp_path, llm_server,
                                    Destination(tmp_path / "p", "postgres", pg_database))


async def test_a_resumed_replace_run_keeps_a_record_reprocessed_from_it(tmp_path, llm_server):
    """A reprocess that passes loads the record as an approval does: the rebuild keeps it."""
    destination = Destination(tmp_path / "p", "jsonl")
    source = rows(60)
    pipeline = write_pipeline(destination.folder, rows=source, base_url=llm_server.base_url,
                              transform={"concurrency": 2},
                              evaluate={"max_rejection_rate": 0.5}, load=destination.load)
    prompt = destination.folder / "prompt.j2"
    original = prompt.read_text()
    async with Workspace(destination.folder) as workspace:
        summary = await cancelled_run(workspace, pipeline, 12, llm_server)
        first = (await workspace.quarantine(run_id=summary.run_id))[0]
        # Today's prompt answers with the truth, so the reprocess passes; the prompt is put
        # back afterwards, so that the resume finds the pipeline the run started with.
        prompt.write_text(original.replace("{{ input.reply }}",
                                           '{"sentiment": "{{ input.expected }}"}'))
        [result] = await workspace.reprocess([first.id])
        prompt.write_text(original)
        assert result.loaded and result.status == "reprocessed", result.message
    code, _, err = await cli_quiet("--run", str(pipeline), "--resume", "--json")
    assert code == 0, err
    assert destination.ids() == Counter(passing(source) | {first.record_id})
    assert destination.sentiment(first.record_id) == "positive"


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_replace_run_keeps_the_records_approved_while_it_ran(tmp_path, llm_server,
                                                                     kind):
    """An approval while the run is still at work: the run's commit, which swaps the
    destination for the run's rows, keeps the approved record."""
    destination = Destination(tmp_path / "p", kind)
    source = rows(60)
    pipeline = write_pipeline(destination.folder, rows=source, base_url=llm_server.base_url,
                              transform={"concurrency": 1},
                              evaluate={"max_rejection_rate": 0.5},
                              load={**destination.load, "batch_size": 3})
    llm_server.latency_s = 0.02  # the rest of the run outlasts the approval
    approved: str | None = None
    async with Workspace(destination.folder) as workspace:
        summary = None
        async for event in workspace.run(workspace.load(pipeline, []), RunOptions()):
            if isinstance(event, BatchLoaded) and approved is None:
                items = await workspace.quarantine(run_id=event.run_id)
                if items:
                    [result] = await workspace.approve([items[0].id])
                    assert result.loaded, result.message
                    approved = items[0].record_id
                    run = await workspace.get_run(event.run_id)
                    assert run.status == "running"  # approved before the run's commit
            if isinstance(event, RunFinished):
                summary = event.summary
    assert summary is not None and summary.status == "success", summary
    assert approved is not None
    assert destination.ids() == Counter(passing(source) | {approved})


async def test_a_release_keeps_the_records_approved_from_the_run_once(tmp_path, llm_server):
    """A held run's release: its passing records and those approved from its quarantine,
    each once, however many times one record id was approved."""
    destination = Destination(tmp_path / "p", "csv")
    source = rows(30)
    pipeline = write_pipeline(destination.folder, rows=source, base_url=llm_server.base_url,
                              evaluate={"max_rejection_rate": 0.1}, load=destination.load)
    code, out, err = await cli_quiet("--run", str(pipeline), "--json")
    assert code == 3, err
    run_id = json.loads(out)["run_id"]
    async with Workspace(destination.folder) as workspace:
        approved = await approve_two(workspace, run_id, destination)
    code, out, err = await cli_quiet("release", run_id)
    assert code == 0, err
    assert "(and 2 approved from its quarantine)" in out
    assert destination.ids() == Counter(passing(source) | set(approved))
    assert {r: destination.sentiment(r) for r in approved} == approved


@pytest.mark.parametrize("how", ["resume", "release"])
async def test_an_approved_duplicate_of_a_passing_record_is_not_a_second_row(tmp_path,
                                                                             llm_server, how):
    """A record whose id an earlier record has too is quarantined (extract.on_duplicate_id:
    quarantine); edited and approved, it takes its id's row at the replace destination. A
    rebuild of the run writes the run's own row for the id and not the approval's beside it:
    one row per id."""
    destination = Destination(tmp_path / "p", "jsonl")
    source = rows(60)
    twin = {**source[1], "text": "the same id again"}
    source.insert(10, twin)  # routed (and quarantined) long before the cancel
    gate = {"max_rejection_rate": 0.5 if how == "resume" else 0.1}
    pipeline = write_pipeline(destination.folder, rows=source, base_url=llm_server.base_url,
                              transform={"concurrency": 2}, evaluate=gate, load=destination.load)
    async with Workspace(destination.folder) as workspace:
        if how == "resume":
            run_id = (await cancelled_run(workspace, pipeline, 30, llm_server)).run_id
        else:
            summary = await workspace.run_to_end(workspace.load(pipeline, []))
            assert summary.status == "partial"
            run_id = summary.run_id
        items = await workspace.quarantine(run_id=run_id)
        [duplicate] = [item for item in items if item.record_id == twin["id"]]
        result = await workspace.approve_edited(duplicate.id, {"sentiment": "neutral"})
        assert result.loaded, result.message
    args = ("--run", str(pipeline), "--resume") if how == "resume" else ("release", run_id)
    code, _, err = await cli_quiet(*args)
    assert code == 0, err
    assert destination.ids() == Counter(passing(source))
