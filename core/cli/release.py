"""`loom release RUN_ID`: publish what a held run kept back, once."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from core.api import Workspace
from core.cli.output import out_console
from core.terminal_text import printable


def release(args: argparse.Namespace) -> int:
    return asyncio.run(_release(args))


async def _release(args: argparse.Namespace) -> int:
    async with Workspace(".") as workspace:
        result = await workspace.release(args.run_id)
    if args.json:
        sys.stdout.write(json.dumps({"run_id": result.run_id, "released": result.released,
                                     "destination": result.destination,
                                     "message": result.message}) + "\n")
    else:
        out_console().print(printable(str(result.message)), highlight=False)
    return 0
