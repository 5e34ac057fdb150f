"""`loom runs`: the run history, newest first, shard groups gathered.

A SQLite store at the current schema is read with sqlite3 (core.store.history_reader): no
SQLAlchemy, no run engine, no asyncio. Any other store is read through the full Store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from core.cli.output import data_text, iso, json_out, out_console
from core.console import STATUS_STYLE, money, seconds, styled
from core.home import CONFIG_FILE, default_store_url, loom_home
from core.sharding import ShardGroup, history_entries, page_groups
from core.terminal_text import printable


@dataclass(frozen=True)
class HistoryPage:
    """What the listing shows: the entries (runs and shard groups), each run's alerts, and the
    files each pipeline name has run from (to tell same-named pipelines apart)."""

    entries: list[Any]
    alerts: dict[str, list[Any]]
    files: dict[str, list[str]]

    @property
    def runs(self) -> list[Any]:
        return runs_of(self.entries)


def runs_of(entries: list[Any]) -> list[Any]:
    """Every run of a page: the runs listed alone and those of each shard group."""
    return [run for entry in entries
            for run in (entry.runs if isinstance(entry, ShardGroup) else [entry])]


def runs(args: argparse.Namespace) -> int:
    page = _read_quickly(args)
    if page is None:
        import asyncio

        page = asyncio.run(_read_from_store(args))
    return _show(page, args)


def _history_url() -> str:
    """The store's URL, without loading the config (pydantic) when there is none to load."""
    from_env = os.environ.get("LOOM_STORE_URL")
    if not (loom_home() / CONFIG_FILE).is_file() and "${" not in (from_env or ""):
        return from_env or default_store_url()
    from core.config import load_config, store_url

    return store_url(load_config())


def _read_quickly(args: argparse.Namespace) -> HistoryPage | None:
    from core.store.history_reader import open_history_reader

    reader = open_history_reader(_history_url())
    if reader is None:
        return None
    try:
        found = reader.list_runs(pipeline=args.pipeline, limit=args.limit)
        groups = page_groups(found)
        entries = history_entries(found, reader.shard_group_runs(groups))
        shown = runs_of(entries)
        return HistoryPage(entries, reader.alerts_for_runs([run.run_id for run in shown]),
                           reader.pipeline_files(sorted({run.pipeline_name for run in shown})))
    except sqlite3.Error:
        return None  # locked past the timeout, damaged, …: the Store says what it is
    finally:
        reader.close()


async def _read_from_store(args: argparse.Namespace) -> HistoryPage:
    from core.api import Workspace

    async with Workspace(".") as workspace:
        entries = await workspace.history(pipeline=args.pipeline, limit=args.limit)
        shown = runs_of(entries)
        store = await workspace.store()
        return HistoryPage(entries, await workspace.run_alerts([run.run_id for run in shown]),
                           await store.pipeline_files(sorted({r.pipeline_name for r in shown})))


def _show(page: HistoryPage, args: argparse.Namespace) -> int:
    entries, alerts, runs = page.entries, page.alerts, page.runs
    if args.json:
        sys.stdout.write(json_out([group_to_dict(e, alerts) if isinstance(e, ShardGroup)
                                     else run_to_dict(e, alerts[e.run_id]) for e in entries]) + "\n")
        return 0
    if not entries:
        out_console().print("no runs yet: try loom --run PIPELINE")
        return 0
    table = Table(box=None, header_style="bold")
    for column in ("run", "pipeline", "status", "started", "loaded", "quar.", "skip", "rejection",
                   "cost", "cache rd", "saved", "duration", "p95", "alerts"):
        table.add_column(column, justify="right" if column in {"loaded", "quar.", "skip", "rejection",
                                                               "cost", "cache rd", "saved",
                                                               "duration", "p95", "alerts"}
                         else "left")
    labels = pipeline_labels(page.files, {(run.pipeline_name, run.pipeline_path) for run in runs})
    for entry in entries:
        if isinstance(entry, ShardGroup):
            _group_rows(table, entry, alerts, labels)
        else:
            _run_row(table, entry, entry.run_id, alerts.get(entry.run_id, []), labels)
    out_console().print(table)
    raised = [(run.run_id, a) for run in runs for a in alerts.get(run.run_id, [])]
    if raised:
        listing = Table(box=None, header_style="bold", title="alerts", title_justify="left")
        for column in ("run", "type", "message"):
            listing.add_column(column, overflow="fold")
        for run_id, alert in raised:
            style = "red" if alert.severity == "error" else "yellow"
            listing.add_row(data_text(run_id), data_text(alert.alert_type, style=style),
                            data_text(alert.message or ""))
        out_console().print(listing)
    return 0


def alert_to_dict(alert: Any) -> dict[str, Any]:
    return {"id": alert.id, "run_id": alert.run_id, "type": alert.alert_type,
            "severity": alert.severity, "message": alert.message,
            "threshold": alert.threshold_value, "actual": alert.actual_value,
            "details": alert.details, "triggered_at": iso(alert.triggered_at),
            "acknowledged": alert.acknowledged, "notified": alert.notification_sent}


def run_to_dict(run: Any, alerts: list[Any] | None = None) -> dict[str, Any]:
    processed = (run.loaded or 0) + (run.quarantined or 0)
    return {
        "kind": "run", "run_id": run.run_id, "pipeline": run.pipeline_name,
        "pipeline_path": run.pipeline_path, "status": run.status,
        # A replace run that ended partial and published nothing: `loom release RUN_ID`.
        "held": run.commit_state == "held", "released": run.commit_state == "released",
        "status_reason": run.status_reason or run.error_message,
        "started_at": iso(run.started_at), "finished_at": iso(run.finished_at),
        "records": {"extracted": run.extracted, "loaded": run.loaded,
                    "quarantined": run.quarantined, "skipped": run.skipped},
        "rejection_rate": run.rejection_rate if run.rejection_rate is not None else (
            (run.quarantined or 0) / processed if processed else 0.0),
        "cost_usd": run.cost_usd, "cost_by_stage": run.cost_by_stage,
        "tokens": {"input": run.input_tokens, "output": run.output_tokens,
                   "cache_read": run.cache_read_tokens or 0,
                   "cache_write": run.cache_write_tokens or 0,
                   "reasoning": run.reasoning_tokens or 0},
        "cost_saved_usd": _saved_total(run.savings_usd),
        "savings_usd": dict(run.savings_usd or {}),
        "llm_calls": run.llm_calls, "cache_hits": run.cache_hits,
        "duration_s": run.duration_s, "model": run.model, "prompt_hash": run.prompt_hash,
        "latency_s": {"p50": run.latency_p50_s, "p95": run.latency_p95_s, "p99": run.latency_p99_s},
        "cost_by_model": run.cost_by_model, "budget_usd": run.budget_usd,
        "llm": {"retries": run.retries, "throttled": run.throttled,
                "concurrency": {"configured": run.concurrency, "min": run.concurrency_min,
                                "final": run.concurrency_final}},
        "alerts": [alert_to_dict(a) for a in alerts or ()],
        "shard": ({"group": run.shard_group, "index": run.shard_index, "count": run.shard_count}
                  if run.shard_group is not None else None),
    }


def group_to_dict(group: ShardGroup, alerts: dict[str, list[Any]]) -> dict[str, Any]:
    """A shard group: the newest run of each shard summed, and every run (retries too)."""
    return {
        "kind": "shard_group", "group": group.group, "pipeline": group.pipeline,
        "status": group.status,
        "shards": {"count": group.shard_count, "ran": group.shard_count - len(group.missing),
                   "missing": group.missing},
        "started_at": iso(group.started_at), "finished_at": iso(group.finished_at),
        "records": {name: group.total(name)
                    for name in ("extracted", "loaded", "quarantined", "skipped")},
        "rejection_rate": group.rejection_rate, "cost_usd": group.cost_usd,
        "tokens": {"input": group.total("input_tokens"), "output": group.total("output_tokens"),
                   "cache_read": group.total("cache_read_tokens"),
                   "cache_write": group.total("cache_write_tokens"),
                   "reasoning": group.total("reasoning_tokens")},
        "savings_usd": _group_savings(group),
        "llm_calls": group.total("llm_calls"), "cache_hits": group.total("cache_hits"),
        "duration_s": group.duration_s,
        "runs": [run_to_dict(run, alerts.get(run.run_id)) for run in group.runs],
    }


def _alert_count(alerts: list[Any]) -> Text:
    if not alerts:
        return Text("-")
    worst = "red" if any(a.severity == "error" for a in alerts) else "yellow"
    return Text(str(len(alerts)), style=worst)


def pipeline_labels(files: dict[str, list[str]], pipelines: set[tuple[str, str | None]]
                    ) -> dict[tuple[str, str | None], str]:
    """How `loom runs` and `loom quarantine list` name each (name, file) pipeline: by its name,
    with its file only when another file has that name too (a pipeline is its file). `files`:
    the store's `pipeline_files` for these names."""
    labels = {}
    for name, path in pipelines:
        shared = len(files.get(name, [])) > 1 and path
        labels[(name, path)] = f"{name} ({_short_path(path)})" if shared and path else name
    return labels


def _short_path(path: str) -> str:
    """A pipeline file as people type it: relative to here when under it, its folder for a
    pipeline.yaml."""
    shown = Path(path)
    with contextlib.suppress(ValueError):
        shown = shown.relative_to(Path.cwd())
    return str(shown.parent if shown.name == "pipeline.yaml" else shown)


def _run_row(table: Table, run: Any, label: str, alerts: list[Any],
             labels: dict[tuple[str, str | None], str] | None = None) -> None:
    data = run_to_dict(run)
    style = STATUS_STYLE.get(run.status, "white")
    name = (labels or {}).get((run.pipeline_name, run.pipeline_path), run.pipeline_name)
    table.add_row(data_text(label), data_text(name), data_text(run.status, style=style),
                  run.started_at.strftime("%Y-%m-%d %H:%M") if run.started_at else "-",
                  str(run.loaded or 0), str(run.quarantined or 0), str(run.skipped or 0),
                  f"{data['rejection_rate']:.1%}", money(run.cost_usd),
                  _tokens_short(run.cache_read_tokens), _saved_short(data["cost_saved_usd"]),
                  f"{run.duration_s:.1f} s" if run.duration_s is not None else "-",
                  seconds(run.latency_p95_s), _alert_count(alerts))


def _group_rows(table: Table, group: ShardGroup, alerts: dict[str, list[Any]],
                labels: dict[tuple[str, str | None], str] | None = None) -> None:
    """The group's sums on one line, then each of its runs (retries too) beneath it."""
    style = STATUS_STYLE.get(group.status, "white")
    ran = group.shard_count - len(group.missing)
    name = _clip_middle(group.group, 40)  # `loom runs --json` has the whole id
    table.add_row(styled((f"shard group {printable(name)}", "bold"), f" ({ran}/{group.shard_count} shards)"),
                  data_text(group.pipeline), data_text(group.status, style=style),
                  group.started_at.strftime("%Y-%m-%d %H:%M"),
                  str(group.total("loaded")), str(group.total("quarantined")),
                  str(group.total("skipped")), f"{group.rejection_rate:.1%}",
                  money(group.cost_usd), _tokens_short(group.total("cache_read_tokens")),
                  _saved_short(_saved_total(_group_savings(group))),
                  f"{group.duration_s:.1f} s" if group.duration_s is not None else "-", "-",
                  _alert_count([a for run in group.runs for a in alerts.get(run.run_id, [])]))
    counted = {run.run_id for run in group.counted}
    for run in sorted(group.runs, key=lambda r: (r.shard_index or 0, r.started_at)):
        mark = "" if run.run_id in counted else " (retried)"
        _run_row(table, run, f"  └ {run.shard_index}/{run.shard_count} {run.run_id}{mark}",
                 alerts.get(run.run_id, []), labels)


def _saved_total(savings: dict[str, float] | None) -> float | None:
    """All levers' savings together (None: no lever was at work)."""
    return round(sum(savings.values()), 6) if savings else None


def _group_savings(group: ShardGroup) -> dict[str, float]:
    totals: dict[str, float] = {}
    for run in group.counted:
        for lever, amount in (run.savings_usd or {}).items():
            totals[lever] = round(totals.get(lever, 0.0) + amount, 6)
    return totals


def _tokens_short(count: int | None) -> str:
    """12,345 -> 12.3k: the runs table's cache-read column."""
    if not count:
        return "-"
    for size, unit in ((1_000_000, "M"), (1_000, "k")):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def _saved_short(amount: float | None) -> str:
    return "-" if amount is None else money(amount)


def _clip_middle(text: str, width: int) -> str:
    """Long ids keep their head and tail (an Airflow group id ends with its run's date)."""
    if len(text) <= width:
        return text
    tail = width * 2 // 3
    return f"{text[:width - tail - 1]}…{text[-tail:]}"


