"""`loom validate PIPELINE…`: each pipeline's YAML and files, then its prompt rendered for the
source's first records, without a model call."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from core.cli.output import out_console
from core.config import load_config
from core.connectors.registry import redact_uri
from core.console import styled
from core.errors import LoomError, one_line
from core.spec import load_spec
from core.terminal_text import printable
from core.validation import DEFAULT_SAMPLE, render_problems


def validate(args: argparse.Namespace) -> int:
    return asyncio.run(_validate(args))


async def _validate(args: argparse.Namespace) -> int:
    """Each pipeline: its YAML and files, then (unless --no-data) its prompt rendered for the
    source's first records, no model call (core.validation). The spec and the validator
    only: checking a pipeline imports no run engine, store or provider."""
    config = load_config()
    code = 0
    out = out_console()
    for path in args.pipelines:
        try:
            loaded = load_spec(path, args.set)
            if not args.no_data:
                rendered, problems = await render_problems(loaded, config,
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

