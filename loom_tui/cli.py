"""The `loom` console script: `loom [FOLDER]` opens the workbench; everything else (`--run`,
`init`, `validate`, `runs`, `quarantine`, …) is the headless command line in core.cli.

Textual is imported only when the workbench opens, so `loom --run` in cron stays light; core.cli
itself imports only its parser until a command runs (tests/test_layout.py checks both).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import core.cli as headless


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in headless.HEADLESS_COMMANDS:
        return headless.main(argv)
    args = headless.build_run_parser().parse_args(argv)
    if args.run:
        return headless.main(argv)
    return open_workbench(Path(args.folder))


def open_workbench(folder: Path) -> int:
    if not folder.is_dir():
        sys.stderr.write(f"error: {folder}: no such folder (loom [FOLDER] opens the workbench "
                         "on a folder of pipelines)\n")
        return 2
    from core.api import LoomError

    try:
        from loom_tui.app import LoomApp

        app = LoomApp(folder)
    except LoomError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
