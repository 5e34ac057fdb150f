"""A test hook: die (or freeze) at a named step, to prove a step's exactly-once machinery.

Off in production: `LOOM_CRASH_AT` is read only when it is set, and then only compared.
`LOOM_CRASH_AT=release:committed` makes the process SIGKILL itself when it reaches the step
`release:committed`; `…:stop` SIGSTOPs it instead (a live holder that does nothing, until a
test sends SIGCONT). The crash tests (tests/adversary) name the steps; nothing else may set it.
"""

from __future__ import annotations

import os
import signal


def crash_point(step: str) -> None:
    wanted = os.environ.get("LOOM_CRASH_AT")
    if not wanted:
        return
    stop = wanted.endswith(":stop")
    if (wanted[:-len(":stop")] if stop else wanted) == step:
        os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)
