"""`loom --run PIPELINE` (the documented way to run headless) and `loom --run … --estimate`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from pathlib import Path

from core.api import Workspace
from core.cli.output import json_out, out_console
from core.cli.parser import build_run_parser
from core.engine import RunController, RunOptions
from core.errors import UsageError, one_line
from core.console import styled
from core.reporting import ProgressReporter, estimate_table, summary_table
from core.sharding import Shard


def run(args: argparse.Namespace) -> int:
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
            sys.stdout.write(json_out(summary.to_json()) + "\n")
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


def estimate(args: argparse.Namespace) -> int:
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
            sys.stdout.write(json_out(result.to_json()) + "\n")
        else:
            for warning in result.warnings:
                sys.stderr.write(f"warning: {one_line(str(warning))}\n")
            out_console().print(estimate_table(result))
        return 0

    return asyncio.run(go())

