"""The headless command line: `loom --run`, `loom validate`, `loom runs`, `loom quarantine`,
`loom secrets`.

Exit codes CI can trust: 0 success; 1 the run failed (no record passed counts as failed); 2
invalid pipeline, usage or a missing secret; 3 partial (rejection rate above max_rejection_rate,
or a budget stop). Every user error
is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import json
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from core import __version__
from core.api import Workspace
from core.connectors.registry import redact_uri
from core.credentials import KeyringSecrets
from core.engine import RunController, RunOptions
from core.errors import LoomError, UsageError, one_line
from core.store.engine import finite_json
from core.estimate import DEFAULT_SAMPLE
from core.reporting import (STATUS_STYLE, ProgressReporter, estimate_table, make_console, money,
                            seconds, styled, summary_table)
from core.sharding import Shard, ShardGroup
from core.terminal_text import printable

HEADLESS_COMMANDS = ("validate", "runs", "release", "quarantine", "secrets", "prices")


def out_console() -> Console:
    """stdout for people; when piped, wide enough that tables do not wrap into columns of words.
    Markup off (core.reporting.make_console): what the store holds prints as written."""
    console = make_console()
    if not console.is_terminal:
        console = make_console(width=200)
    return console


def _json_out(value: Any, **options: Any) -> str:
    """`--json` output: always JSON (a NaN or an Infinity from the data prints as null)."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        return json.dumps(finite_json(value), allow_nan=False, **options)


_INT_MAX = 2**63 - 1  # what the store's (and SQLite's) integers hold


def _count(text: str) -> int:
    """An integer argument the store can hold: anything larger is a one-line usage error
    (argparse's), never an OverflowError from the database."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not -_INT_MAX <= value <= _INT_MAX:
        raise argparse.ArgumentTypeError(f"{text[:30]}{'…' if len(text) > 30 else ''} is out "
                                         f"of range (at most {_INT_MAX})")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (its default also prints the whole usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"loom: {message} (see loom --help)\n")
        raise SystemExit(2)


def build_run_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="loom",
        description="AI(E)TL pipelines: extract, transform with an LLM, evaluate, load or quarantine.",
        epilog=("commands: loom validate PIPELINE… · loom runs · loom release RUN_ID · "
                "loom quarantine list · "
                "loom secrets set|list|delete · loom prices [MODEL…]\n"
                "With no --run, `loom [FOLDER]` opens the workbench."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=".", help="folder with pipelines (workbench)")
    parser.add_argument("--run", metavar="PIPELINE", help="run a pipeline headless")
    parser.add_argument("--limit", type=_count, metavar="N", help="process at most N records")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline key, e.g. --set transform.model=gpt-4o (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    parser.add_argument("--no-cache", action="store_true", help="do not use cached LLM answers")
    parser.add_argument("--record", metavar="FILE", help="record every LLM exchange to a cassette")
    parser.add_argument("--estimate", type=_count, nargs="?", const=DEFAULT_SAMPLE, metavar="N",
                        help=f"run N sample records (default {DEFAULT_SAMPLE}) without loading them "
                             "and project the cost, tokens and time of the whole run")
    parser.add_argument("--shard", metavar="I/N",
                        help="process only shard I of N (numbered from 0) of the source's records")
    parser.add_argument("--shard-group", metavar="NAME",
                        help="the id the N shard runs share (default under Airflow: the task)")
    parser.add_argument("--resume", nargs="?", const="", metavar="RUN_ID",
                        help="finish an unfinished run (crashed, killed, cancelled or failed) "
                             "instead of starting one: RUN_ID, or the pipeline's newest; what "
                             "was loaded is not loaded again, what was answered not paid again")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: resume even though the pipeline changed since the "
                             "run started")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show Loom's version and the price data it uses, and exit")
    return parser


class _Version(argparse.Action):
    """`loom --version`: Loom's version and which genai-prices data prices its runs (read only
    when asked: the data is not loaded to parse a command line)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write(f"loom {__version__}\nprices: {_price_data_line()}\n")
        parser.exit()


def _price_data_line() -> str:
    from core.config import load_config
    from core.llm.pricing import Pricing

    try:
        return Pricing.from_config(load_config()).data_info().describe()
    except LoomError:  # a broken config.yaml: still say what the data is
        return Pricing().data_info().describe()


def build_command_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loom")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    validate = commands.add_parser("validate", help="check pipelines without running them")
    validate.add_argument("pipelines", nargs="+", metavar="PIPELINE")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.add_argument("--no-data", action="store_true",
                          help="do not read the source to render the prompt against its first "
                               "records (for a source that cannot be reached from here)")

    runs = commands.add_parser("runs", help="run history")
    runs.add_argument("--pipeline", help="only this pipeline's runs")
    runs.add_argument("--limit", type=_count, default=20)
    runs.add_argument("--json", action="store_true")

    release = commands.add_parser(
        "release", help="publish the passing records a held run (replace, ended partial) kept "
                        "back, into its destination, once")
    release.add_argument("run_id", metavar="RUN_ID")
    release.add_argument("--json", action="store_true")

    quarantine = commands.add_parser("quarantine", help="records that did not pass")
    actions = quarantine.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listing = actions.add_parser("list", help="quarantined records")
    listing.add_argument("--run", dest="run_id")
    listing.add_argument("--pipeline")
    listing.add_argument("--stage", choices=["extract", "transform", "evaluate", "load"])
    listing.add_argument("--status", default="open",
                         choices=["open", "approved", "reprocessed", "discarded", "all"])
    listing.add_argument("--limit", type=_count, default=50)
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="one quarantined record, whole")
    show.add_argument("id", type=_count)
    show.add_argument("--json", action="store_true")
    approve = actions.add_parser("approve", help="load the records' outputs as they are")
    approve.add_argument("ids", type=_count, nargs="+", metavar="ID")
    approve.add_argument("--output", metavar="JSON",
                         help="replace the output first (one ID): edit, then approve")
    approve.add_argument("--note")
    approve.add_argument("--json", action="store_true")
    reprocess = actions.add_parser(
        "reprocess", help="transform and evaluate again with the current prompt and model")
    reprocess.add_argument("ids", type=_count, nargs="+", metavar="ID")
    reprocess.add_argument("--json", action="store_true")
    discard = actions.add_parser("discard", help="drop the records for good")
    discard.add_argument("ids", type=_count, nargs="+", metavar="ID")
    discard.add_argument("--note")
    discard.add_argument("--json", action="store_true")

    secrets = commands.add_parser("secrets", help="${NAME} secrets in the keyring (service loom)")
    secret_actions = secrets.add_subparsers(dest="action", required=True, parser_class=_Parser)
    setting = secret_actions.add_parser(
        "set", help="store a secret: the value from a hidden prompt, or from stdin when piped")
    setting.add_argument("name", metavar="NAME")
    names = secret_actions.add_parser("list", help="the names of the stored secrets (never values)")
    names.add_argument("--json", action="store_true")
    deleting = secret_actions.add_parser("delete", help="remove a secret")
    deleting.add_argument("name", metavar="NAME")

    prices = commands.add_parser(
        "prices", help="what models cost, from genai-prices and your overrides (USD per 1M tokens)")
    prices.add_argument("models", nargs="*", metavar="MODEL")
    prices.add_argument("--provider", default=None,
                        choices=("openai", "anthropic", "openai_compatible", "replay"),
                        help="the Loom provider the model is called through (default: by name)")
    prices.add_argument("--base-url", default=None, help="the provider's base URL")
    prices.add_argument("--refresh", action="store_true",
                        help="download genai-prices' current data into $LOOM_HOME/prices.json "
                             "(runs then use it; delete the file to go back to the bundled data)")
    prices.add_argument("--url", default=None, help="with --refresh: where to download from")
    prices.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in HEADLESS_COMMANDS:
            args = build_command_parser().parse_args(argv)
            return asyncio.run(_dispatch(args))
        args = build_run_parser().parse_args(argv)
        if args.estimate is not None and not args.run:
            build_run_parser().error("--estimate needs --run PIPELINE")
        if args.force and args.resume is None:
            build_run_parser().error("--force goes with --resume")
        if args.resume is not None and not args.run:
            build_run_parser().error("--resume needs --run PIPELINE")
        if args.resume is not None and args.estimate is not None:
            build_run_parser().error("--estimate and --resume do not go together")
        if args.run and args.estimate is not None:
            return _estimate(args)
        if args.run:
            return _run(args)
        raise SystemExit(open_workbench(args.folder))
    except LoomError as exc:
        sys.stderr.write(f"error: {one_line(str(exc))}\n")
        return exc.exit_code


def open_workbench(folder: str) -> int:
    """The TUI lives outside core; the entry point (loom_tui.cli) launches it."""
    build_run_parser().print_help()
    return 0


# ---------------------------------------------------------------- loom --run


def _run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise SystemExit(build_run_parser().error("--limit must be 0 or more"))
    if args.shard_group is not None and args.shard is None:
        raise UsageError("--shard-group needs --shard I/N")
    shard = Shard.parse(args.shard, args.shard_group) if args.shard is not None else None
    controller = RunController()
    reporter = ProgressReporter()
    stdout = out_console()

    async def go() -> int:
        loop = asyncio.get_running_loop()
        interrupts = 0

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                reporter.console.print(styled(("stopping: finishing records in flight "
                                               "(ctrl+c again to abandon them)", "magenta")))
                controller.cancel("cancelled by ctrl+c")
            else:
                for task in asyncio.all_tasks(loop):
                    if task is not asyncio.current_task(loop):
                        task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
            loop.add_signal_handler(signal.SIGTERM, on_interrupt)
        except (NotImplementedError, RuntimeError):
            pass
        async with Workspace(".") as workspace:
            record_path = Path(args.record) if args.record else None
            if args.resume is not None:
                loaded, options = await workspace.prepare_resume(
                    args.run, args.resume or None, force=args.force, overrides=args.set or None,
                    shard=shard, limit=args.limit, use_cache=not args.no_cache,
                    record_path=record_path)
            else:
                loaded = workspace.load(args.run, args.set)
                options = RunOptions(limit=args.limit, use_cache=not args.no_cache,
                                     record_path=record_path, shard=shard,
                                     overrides=list(args.set))
            try:
                summary = await workspace.run_to_end(loaded, options, listeners=[reporter],
                                                     controller=controller)
            finally:
                reporter.stop()
        if args.json:
            sys.stdout.write(_json_out(summary.to_json()) + "\n")
        else:
            stdout.print(summary_table(summary))
        return summary.exit_code

    # Everything alive now (modules, classes, the parsed pipeline) lives as long as the process:
    # freeze it out of the cyclic collector's walks, and let the young generation grow before a
    # collection. A run allocates a few dozen short-lived objects per record: this takes about
    # 9% off the CPU of a 3,000-record run of bench/throughput.py's pipeline.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    return asyncio.run(go())


def _estimate(args: argparse.Namespace) -> int:
    if args.estimate < 1:
        build_run_parser().error("--estimate needs at least 1 sample record")
    if args.limit is not None and args.limit < 0:
        build_run_parser().error("--limit must be 0 or more")

    async def go() -> int:
        async with Workspace(".") as workspace:
            loaded = workspace.load(args.run, args.set)
            result = await workspace.estimate(loaded, sample=args.estimate, limit=args.limit,
                                              use_cache=not args.no_cache)
        if args.json:
            sys.stdout.write(_json_out(result.to_json()) + "\n")
        else:
            for warning in result.warnings:
                sys.stderr.write(f"warning: {one_line(str(warning))}\n")
            out_console().print(estimate_table(result))
        return 0

    return asyncio.run(go())


# ---------------------------------------------------------------- other commands


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return await _validate(args)
    if args.command == "secrets":
        return _secrets(args)
    if args.command == "prices":
        return _prices(args)
    async with Workspace(".") as workspace:
        if args.command == "runs":
            return await _runs(workspace, args)
        if args.command == "release":
            result = await workspace.release(args.run_id)
            if args.json:
                sys.stdout.write(json.dumps({"run_id": result.run_id, "released": result.released,
                                             "destination": result.destination,
                                             "message": result.message}) + "\n")
            else:
                out_console().print(printable(str(result.message)), highlight=False)
            return 0
        if args.command == "quarantine":
            if args.action == "list":
                return await _quarantine_list(workspace, args)
            if args.action == "show":
                return await _quarantine_show(workspace, args)
            return await _quarantine_act(workspace, args)
    return 2


def _prices(args: argparse.Namespace) -> int:
    from core.config import load_config, loom_home
    from core.llm.pricing import PRICES_FILE, Pricing, fetch_price_data

    out = out_console()
    if args.refresh:
        try:
            info = fetch_price_data(loom_home() / PRICES_FILE, url=args.url)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch is one line, exit 1
            sys.stderr.write(f"error: could not refresh the price data: {one_line(str(exc))}\n")
            return 1
        if not args.models:
            out.print(f"prices: {info.describe()}", highlight=False)
            return 0
    pricing = Pricing.from_config(load_config())
    info = pricing.data_info()
    found = []
    for model in args.models:
        quote = pricing.quote(model, provider=args.provider, base_url=args.base_url)
        found.append((model, quote))
    if args.json:
        sys.stdout.write(json.dumps({
            "data": {"package": f"genai-prices {info.package_version}", "source": info.source,
                     "fetched_at": info.fetched_at, "newest_price_date": info.newest_price_date},
            "models": [_quote_to_dict(model, quote) for model, quote in found]}) + "\n")
        return 0 if all(quote is not None for _, quote in found) else 1
    out.print(f"prices: {info.describe()}", highlight=False)
    for model, quote in found:
        if quote is None:
            where = f" on {args.provider}" if args.provider else ""
            out.print(f"{model}{where}: no price known (price it under pricing: in "
                      f"~/.loom/config.yaml, or with transform.price in the pipeline)",
                      highlight=False)
            continue
        rate = quote.rate
        origin = (f"{quote.provider_id}/{quote.model_id}" if quote.source != "override"
                  else "override")
        parts = [f"input ${rate.input:g}", f"output ${rate.output:g}"]
        for label, value in (("cache read", rate.cache_read), ("cache write 5m", rate.cache_write),
                             ("cache write 1h", rate.cache_write_1h)):
            if value is not None:
                parts.append(f"{label} ${value:g}")
        line = f"{model} ({origin}): " + ", ".join(parts) + " per 1M tokens"
        by_start: dict[int, list[str]] = {}
        for key, tiers in quote.tiers.items():
            for start, price in tiers:
                by_start.setdefault(start, []).append(f"{key.replace('_', ' ')} ${price:g}")
        for start, prices in sorted(by_start.items()):
            line += f"; above {start:,} prompt tokens: " + ", ".join(prices)
        out.print(line, highlight=False)
    return 0 if all(quote is not None for _, quote in found) else 1


def _quote_to_dict(model: str, quote: Any) -> dict[str, Any]:
    if quote is None:
        return {"model": model, "known": False}
    rate = quote.rate
    return {"model": model, "known": True, "source": quote.source,
            "provider": quote.provider_id, "model_id": quote.model_id,
            "usd_per_mtok": {"input": rate.input, "output": rate.output,
                             "cache_read": rate.cache_read, "cache_write": rate.cache_write,
                             "cache_write_1h": rate.cache_write_1h},
            "tiers": {key: [{"above_prompt_tokens": start, "usd_per_mtok": price}
                            for start, price in tiers] for key, tiers in quote.tiers.items()}}


async def _validate(args: argparse.Namespace) -> int:
    """Each pipeline: its YAML and files, then (unless --no-data) its prompt rendered for the
    source's first records, no model call (core.validation)."""
    from core.validation import DEFAULT_SAMPLE, render_problems

    workspace = Workspace(".")
    code = 0
    out = out_console()
    for path in args.pipelines:
        try:
            loaded = workspace.load(path, args.set)
            if not args.no_data:
                rendered, problems = await render_problems(loaded, workspace.config,
                                                           sample=DEFAULT_SAMPLE)
                if problems:
                    for problem in problems:
                        sys.stderr.write(f"error: {one_line(str(problem))}\n")
                    code = 2
                    continue
            evaluators = len(loaded.spec.evaluate.evaluators)
            shown = "" if args.no_data else (
                f" · prompt rendered for {rendered} record{'s' if rendered != 1 else ''}, "
                f"no model call")
            out.print(styled(("ok", "green"), printable(
                f" {loaded.spec.name} ({path}): {redact_uri(loaded.spec.extract.source)} → "
                f"{loaded.spec.transform.provider}:{loaded.spec.transform.model} → "
                f"{evaluators} evaluator{'s' if evaluators != 1 else ''} → "
                f"{redact_uri(loaded.spec.load.destination)}{shown}")),
                      highlight=False, soft_wrap=True)
            _note_leftovers(loaded)
        except LoomError as exc:
            sys.stderr.write(f"error: {one_line(str(exc))}\n")
            code = max(code, exc.exit_code)
    return code


def _note_leftovers(loaded: Any) -> None:
    """Staging files that runs which died left beside a file destination: said, not removed
    (the next run to the destination removes them)."""
    from core.connectors.files import leftover_staging

    found = leftover_staging(loaded)
    if found is None or not found[1]:
        return
    path, runs = found
    shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
    sys.stderr.write(one_line(f"note: staging files of {len(runs)} run"
                              f"{'s' if len(runs) != 1 else ''} that died are beside {path} "
                              f"({shown}); the next run to it removes them") + "\n")


def _read_secret(name: str) -> str:
    """The value from a hidden prompt at a terminal, else all of stdin (one final newline off)."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        return getpass.getpass(f"value for {name} (hidden): ")
    value = stdin.read() if stdin is not None else ""
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def _secrets(args: argparse.Namespace) -> int:
    workspace = Workspace(".")
    out = out_console()
    if args.action == "set":
        KeyringSecrets.check_name(args.name)  # before asking for the value
        workspace.set_secret(args.name, _read_secret(args.name))
        out.print(f"stored {args.name} in the keyring ({workspace.secrets_backend()}); pipelines "
                  f"use it as ${{{args.name}}}", highlight=False)
        return 0
    if args.action == "delete":
        workspace.delete_secret(args.name)
        out.print(f"deleted {args.name} from the keyring", highlight=False)
        return 0
    names = workspace.secret_names()
    if args.json:
        sys.stdout.write(_json_out(names) + "\n")
    elif names:
        for name in names:
            out.print(name, highlight=False)
    else:
        out.print("no secrets in the keyring yet: loom secrets set NAME", highlight=False)
    return 0


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def alert_to_dict(alert: Any) -> dict[str, Any]:
    return {"id": alert.id, "run_id": alert.run_id, "type": alert.alert_type,
            "severity": alert.severity, "message": alert.message,
            "threshold": alert.threshold_value, "actual": alert.actual_value,
            "details": alert.details, "triggered_at": _iso(alert.triggered_at),
            "acknowledged": alert.acknowledged, "notified": alert.notification_sent}


def run_to_dict(run: Any, alerts: list[Any] | None = None) -> dict[str, Any]:
    processed = (run.loaded or 0) + (run.quarantined or 0)
    return {
        "kind": "run", "run_id": run.run_id, "pipeline": run.pipeline_name,
        "pipeline_path": run.pipeline_path, "status": run.status,
        # A replace run that ended partial and published nothing: `loom release RUN_ID`.
        "held": run.commit_state == "held", "released": run.commit_state == "released",
        "status_reason": run.status_reason or run.error_message,
        "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
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
        "started_at": _iso(group.started_at), "finished_at": _iso(group.finished_at),
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


async def _runs(workspace: Workspace, args: argparse.Namespace) -> int:
    entries = await workspace.history(pipeline=args.pipeline, limit=args.limit)
    runs = [run for entry in entries
            for run in (entry.runs if isinstance(entry, ShardGroup) else [entry])]
    alerts = await workspace.run_alerts([r.run_id for r in runs])
    if args.json:
        sys.stdout.write(_json_out([group_to_dict(e, alerts) if isinstance(e, ShardGroup)
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
    labels = await _pipeline_labels(await workspace.store(),
                                    {(run.pipeline_name, run.pipeline_path) for run in runs})
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


def data_text(value: Any, style: str = "") -> Text:
    """A table cell or a line part from data: one line, nothing a terminal would obey."""
    return Text(printable(str(value)), style=style)


def _alert_count(alerts: list[Any]) -> Text:
    if not alerts:
        return Text("-")
    worst = "red" if any(a.severity == "error" for a in alerts) else "yellow"
    return Text(str(len(alerts)), style=worst)


async def _pipeline_labels(store: Any, pipelines: set[tuple[str, str | None]]
                           ) -> dict[tuple[str, str | None], str]:
    """How `loom runs` and `loom quarantine list` name each (name, file) pipeline: by its name,
    with its file only when another file has that name too (a pipeline is its file)."""
    files = await store.pipeline_files(sorted({name for name, _ in pipelines}))
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


def quarantined_to_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "run_id": row.run_id, "pipeline": row.pipeline_name,
        "record_id": row.record_id, "stage": row.stage, "reason": row.reason,
        "error_type": row.error_type, "status": row.status,
        "quarantined_at": _iso(row.quarantined_at), "input": row.input, "output": row.output,
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
        sys.stdout.write(_json_out([quarantined_to_dict(r) for r in rows], default=str) + "\n")
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
    labels = await _pipeline_labels(store, {(row.pipeline_name, paths[row.run_id]) for row in rows})
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
    data["actions"] = [{"action": a.action, "at": _iso(a.at), "actor": a.actor,
                        "details": a.details} for a in history]
    if args.json:
        sys.stdout.write(_json_out(data, default=str) + "\n")
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
        sys.stdout.write(_json_out([{"id": r.quarantine_id, "action": r.action,
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
