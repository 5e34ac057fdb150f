"""The `loom` console script: headless commands go to core.cli; `loom [FOLDER]` opens the workbench."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from core import cli as headless


def main(argv: Sequence[str] | None = None) -> int:
    return headless.main(argv)


if __name__ == "__main__":
    sys.exit(main())
