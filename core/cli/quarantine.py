"""`loom quarantine list|show|approve|reprocess|discard`: the records that did not pass."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from core.api import Workspace
from core.cli.history import pipeline_labels
from core.cli.output import data_text, iso, json_out, out_console
from core.console import styled
from core.errors import UsageError
from core.terminal_text import printable


def quarantine(args: argparse.Namespace) -> int:
    return asyncio.run(_quarantine(args))


async def _quarantine(args: argparse.Namespace) -> int:
    async with Workspace(".") as workspace:
        if args.action == "list":
            return await _quarantine_list(workspace, args)
        if args.action == "show":
            return await _quarantine_show(workspace, args)
        return await _quarantine_act(workspace, args)


def quarantined_to_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "run_id": row.run_id, "pipeline": row.pipeline_name,
        "record_id": row.record_id, "stage": row.stage, "reason": row.reason,
        "error_type": row.error_type, "status": row.status,
        "quarantined_at": iso(row.quarantined_at), "input": row.input, "output": row.output,
        "raw_output": row.raw_output, "scores": row.scores, "verdict": row.verdict,
    }


async def _quarantine_list(workspace: Workspace, args: argparse.Namespace) -> int:
    store = await workspace.store()
    run_id = args.run_id
    if run_id:
        run = await store.get_run(run_id)
        if run is None:
            sys.stderr.write(f"error: no run {run_id}\n")
            return 2
        run_id = run.run_id
    rows = await store.list_quarantine(pipeline=args.pipeline, run_id=run_id, stage=args.stage,
                                       status=None if args.status == "all" else args.status,
                                       limit=args.limit)
    if args.json:
        sys.stdout.write(json_out([quarantined_to_dict(r) for r in rows], default=str) + "\n")
        return 0
    if not rows:
        out_console().print("the quarantine is empty" + (f" for run {run_id}" if run_id else ""))
        return 0
    table = Table(box=None, header_style="bold")
    for column in ("id", "run", "pipeline", "record", "stage", "reason"):
        table.add_column(column, overflow="ellipsis", no_wrap=column != "reason")
    paths = {}
    for run_of_row in {row.run_id for row in rows}:
        found = await store.get_run(run_of_row)
        paths[run_of_row] = found.pipeline_path if found is not None else None
    pipelines = {(row.pipeline_name, paths[row.run_id]) for row in rows}
    labels = pipeline_labels(await store.pipeline_files(sorted({name for name, _ in pipelines})),
                             pipelines)
    for row in rows:
        reason = (row.reason or "").replace("\n", " ")
        table.add_row(*(data_text("" if value is None else value) for value in (
            str(row.id), row.run_id, labels[(row.pipeline_name, paths[row.run_id])], row.record_id,
            row.stage, reason[:160] + ("…" if len(reason) > 160 else ""))))
    out_console().print(table)
    return 0


async def _quarantine_show(workspace: Workspace, args: argparse.Namespace) -> int:
    row = await workspace.quarantined(args.id)
    if row is None:
        sys.stderr.write(f"error: there is no quarantined record {args.id}\n")
        return 2
    history = await workspace.quarantine_history(args.id)
    data = quarantined_to_dict(row)
    data["actions"] = [{"action": a.action, "at": iso(a.at), "actor": a.actor,
                        "details": a.details} for a in history]
    if args.json:
        sys.stdout.write(json_out(data, default=str) + "\n")
        return 0
    out = out_console()
    out.print(styled((f"quarantined record {row.id}", "bold"),
                     printable(f"  {row.pipeline_name} · run {row.run_id} · record "
                               f"{row.record_id} · "),
                     (printable(str(row.status)), "yellow")), highlight=False)
    out.print(styled(("stage", "dim"), f"   {printable(str(row.stage))}\n", ("reason", "dim"),
                     f"  {printable(str(row.reason))}"), highlight=False)
    out.print(styled(("input", "dim")))
    out.print_json(json.dumps(row.input, default=str))
    out.print(styled(("output", "dim")))
    if row.output is not None:
        out.print_json(json.dumps(row.output, default=str))
    else:
        out.print(f"  (none) raw answer: {row.raw_output!r}", highlight=False)
    if row.scores:
        table = Table(box=None, header_style="bold")
        for column in ("evaluator", "score", "passed", "explanation"):
            table.add_column(column)
        for score in row.scores:
            table.add_row(data_text(score.get("evaluator", "?")), f"{score.get('value', 0):.2f}",
                          Text("yes") if score.get("passed") else Text("no", style="red"),
                          data_text(score.get("explanation", "")))
        out.print(table)
    for action in data["actions"]:
        out.print(styled((str(action["at"]), "dim"), printable(
            f" {action['action']} by {action['actor'] or '?'}: {action['details']}")),
            highlight=False)
    return 0


async def _quarantine_act(workspace: Workspace, args: argparse.Namespace) -> int:
    if args.action == "approve" and args.output is not None:
        if len(args.ids) != 1:
            raise UsageError("--output edits one record: give exactly one ID")
        try:
            output = json.loads(args.output)
        except ValueError as exc:
            raise UsageError(f"--output is not JSON: {exc}") from None
        results = [await workspace.approve_edited(args.ids[0], output, note=args.note)]
    elif args.action == "approve":
        results = await workspace.approve(args.ids, note=args.note)
    elif args.action == "reprocess":
        results = await workspace.reprocess(args.ids)
    else:
        results = await workspace.discard(args.ids, note=args.note)
    if args.json:
        sys.stdout.write(json_out([{"id": r.quarantine_id, "action": r.action,
                                      "status": r.status, "loaded": r.loaded,
                                      "message": r.message} for r in results]) + "\n")
    else:
        out = out_console()
        for result in results:
            style = "green" if result.loaded or result.status == "discarded" else "yellow"
            out.print(styled(f"{result.quarantine_id}: ", (str(result.status), style),
                             printable(f" {result.message}")), highlight=False)
    # Nothing done for some records (still failing, nothing to approve, held by another
    # action): say so in the code. A record already as asked (approved twice) is done.
    return 0 if all(r.done for r in results) else 1
