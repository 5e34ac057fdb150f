"""Who holds a claim, and whether that holder is still there.

A release (core.release) claims its run and a quarantine action (core.quarantine) claims its
records, in the store, atomically: of two processes one gets each, and the other is told who has
it. A claim records its holder (`Holder`: pid, host and the process's start time) so that a
later process can tell a holder that died (SIGKILL, OOM, power loss) from one still at work, and
take the dead one's claim over: it then finishes the dead holder's work exactly once (the commit
token, the load ledger: the same machinery a resumed run uses).

On this machine the pid says it: a pid that is gone, or that now belongs to a process started at
another time (a reused pid), is a dead holder. On another machine only time can say: a holder
renews `claimed_at` as it works, and one that has not for LEASE_S is taken for dead.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

# A holder on another machine that has not renewed its claim for this long is taken for dead.
# Holders renew at every step (a page released, a record reprocessed), seconds apart.
LEASE_S = 120.0


def host_name() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, as someone else's
    try:  # a zombie (killed, not yet reaped) is dead for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_alive(pid: int, started: str) -> bool:
    """Whether the process `pid` of this machine, started at `started` (see start_time; ""
    when unknown), is still there: a pid that is gone, or that now belongs to a process
    started at another time (a reused pid), is not."""
    if not pid_alive(pid):
        return False
    return not started or start_time(pid) in ("", started)


def start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), "" when
    the system does not say: what tells a reused pid from the process that held the claim."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str  # see start_time

    @classmethod
    def me(cls) -> "Holder":
        pid = os.getpid()
        return cls(pid, host_name(), start_time(pid))

    @property
    def key(self) -> str:
        """What the store keeps: one text, compared whole in conditional updates."""
        return f"{self.pid}@{self.host}@{self.started}"

    @classmethod
    def parse(cls, key: str | None) -> "Holder | None":
        if not key:
            return None
        pid, _, rest = key.partition("@")
        host, _, started = rest.rpartition("@")
        try:
            return cls(int(pid), host, started)
        except ValueError:
            return None

    def alive(self, claimed_at: datetime | None, now: datetime | None = None) -> bool:
        if self.host == host_name():
            return process_alive(self.pid, self.started)
        if claimed_at is None:
            return False
        now = now or datetime.now(timezone.utc)
        return (now - claimed_at).total_seconds() < LEASE_S


def holder_alive(key: str | None, claimed_at: datetime | None) -> bool:
    holder = Holder.parse(key)
    return holder is not None and holder.alive(claimed_at)


def describe(key: str | None, claimed_at: datetime | None) -> str:
    """"pid 123 on host since 00:12:03 UTC", for the one line a refused process prints."""
    holder = Holder.parse(key)
    who = f"pid {holder.pid} on {holder.host}" if holder else "another process"
    when = f" since {claimed_at.astimezone(timezone.utc):%H:%M:%S} UTC" if claimed_at else ""
    return who + when


class ClaimState(str, Enum):
    """What asking for a claim found."""

    CLAIMED = "claimed"  # free: it is ours now
    TAKEN_OVER = "taken_over"  # its holder died: ours now, with what the dead holder left
    HELD = "held"  # a live holder has it
    RESOLVED = "resolved"  # nothing left to do (a quarantined record resolved, a run released)
    RELEASING = "releasing"  # a quarantined record of a run that a live release holds
    BUSY = "busy"  # a run whose quarantined records a live action holds
    REFUSED = "refused"  # not in a state the claim is for (a run that holds nothing back)
    MISSING = "missing"


@dataclass(frozen=True)
class Claim:
    """One answer of the store to "may I have it?"."""

    state: ClaimState
    status: str | None = None  # the record's status, the run's commit state
    holder: str = ""  # describe() of the live holder in the way, for HELD, RELEASING, BUSY
    claim_id: str | None = None  # the quarantine claim's id (kept when taken over)
    token: str | None = None  # the commit token the dead holder left
