"""`loom init [FOLDER]`: a small pipeline to start from (core.scaffold writes it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.output import out_console


def init(args: argparse.Namespace) -> int:
    from core.scaffold import scaffold

    folder = Path(args.folder)
    written = scaffold(folder)
    out = out_console()
    for path in written:
        out.print(f"wrote {path}", highlight=False)
    pipeline = folder / "pipeline.yaml"
    out.print(f"next: loom validate {pipeline} · loom --run {pipeline} (offline: it replays "
              f"the answers in its cassette)", highlight=False)
    return 0
