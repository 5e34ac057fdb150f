"""The headless command line: `loom --run`, `loom init`, `loom validate`, `loom runs`,
`loom release`, `loom quarantine`, `loom secrets`, `loom prices`.

Exit codes CI can trust: 0 success; 1 the run failed (no record passed counts as failed); 2
invalid pipeline, usage or a missing secret; 3 partial (rejection rate above max_rejection_rate,
or a budget stop). Every user error is one line on stderr, never a traceback.

This module parses and dispatches only: each command's module (core.cli.run, .history, …) is
imported when that command runs, so `loom --help` imports argparse and not the engine, and
`loom runs` reads the history without the run engine, the providers or the templates.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from core.cli.parser import (HEADLESS_COMMANDS, build_command_parser, build_run_parser)
from core.errors import LoomError, one_line

__all__ = ["HEADLESS_COMMANDS", "build_command_parser", "build_run_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in HEADLESS_COMMANDS:
            return _command(argv)
        return _run_or_help(argv)
    except LoomError as exc:
        sys.stderr.write(f"error: {one_line(str(exc))}\n")
        return exc.exit_code


def _run_or_help(argv: list[str]) -> int:
    parser = build_run_parser()
    args = parser.parse_args(argv)
    if args.estimate is not None and not args.run:
        parser.error("--estimate needs --run PIPELINE")
    if args.force and args.resume is None:
        parser.error("--force goes with --resume")
    if args.resume is not None and not args.run:
        parser.error("--resume needs --run PIPELINE")
    if args.resume is not None and args.estimate is not None:
        parser.error("--estimate and --resume do not go together")
    if not args.run:
        # The workbench lives outside core: its entry point (loom_tui.cli) opens it.
        parser.print_help()
        raise SystemExit(0)
    from core.cli import run

    return run.estimate(args) if args.estimate is not None else run.run(args)


def _command(argv: list[str]) -> int:
    parser = build_command_parser()
    args = parser.parse_args(argv)
    if args.command in parser.actions and args.action is None:
        # `loom quarantine` alone: what it can do, on stderr, as a usage error.
        sys.stderr.write(parser.actions[args.command].format_help())
        sys.stderr.write(f"loom: {args.command} needs one of the actions above\n")
        return 2
    if args.command == "init":
        from core.cli.init import init

        return init(args)
    if args.command == "validate":
        from core.cli.validate import validate

        return validate(args)
    if args.command == "runs":
        from core.cli.history import runs

        return runs(args)
    if args.command == "release":
        from core.cli.release import release

        return release(args)
    if args.command == "quarantine":
        from core.cli.quarantine import quarantine

        return quarantine(args)
    if args.command == "secrets":
        from core.cli.secrets import secrets

        return secrets(args)
    from core.cli.prices import prices

    return prices(args)
