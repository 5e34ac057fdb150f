"""One committer at a time per destination file, and staging files tied to a live writer.

A file sink's commit copies the current destination, adds the run's rows and renames the
result over it. Two runs doing that at once each copy the same old file, and the last rename
wins: the other run's rows are gone although both runs say `success`. So a commit holds an
exclusive lock on `.NAME.loom.lock` beside the destination, for the copy and the rename only
(never for the run: a run that waits, waits for another commit, not for another run).

The lock is an flock, not the lock file's existence: the kernel drops it with the last open
file of its holder, so a killed run never leaves the destination locked. What the lock file
holds (who has it) only lets a waiter say whom it waits for.

Staging files are flocked by their writer for as long as they exist, so "nobody can lock it"
means "a live run is writing it": `sweep_staging` removes only the staging files it can lock,
those of runs that died without cleaning up.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from core.errors import ConnectorError, DestinationBusy, one_line

_BUSY = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def lock_path(destination: Path) -> Path:
    return destination.parent / f".{destination.name}.loom.lock"


def staging_prefix(destination: Path) -> str:
    """Every staging file of `destination` is `<prefix><run id>[.part].tmp`."""
    return f".{destination.name}.loom-"


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who said they hold a destination's lock (the lock file's content: informative only)."""

    run_id: str | None = None
    pid: int | None = None
    host: str | None = None

    def describe(self) -> str:
        if self.run_id is None and self.pid is None:
            return "another process"
        where = f"pid {self.pid}" if self.pid is not None else "pid ?"
        if self.host and self.host != socket.gethostname():
            where += f" on {self.host}"
        # The content is anyone's to write: one line, and not too much of it.
        return one_line(f"run {self.run_id or '?'} ({where})")[:200]


def _busy(exc: OSError) -> bool:
    return exc.errno in _BUSY


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file `fd` is open on (it may have been removed or
    replaced between our open and our lock)."""
    try:
        current = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


class DestinationLock:
    """The commit lock of one destination file. Not reentrant; release() is idempotent."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.path = lock_path(destination)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    async def acquire(self, *, run_id: str, timeout_s: float, what: str,
                      on_wait: Callable[[str], None]) -> None:
        """Take the lock, waiting at most `timeout_s`; `on_wait` hears once that we wait.

        Polls (no thread sits blocked in flock): a cancelled run stops waiting at once.
        Raises DestinationBusy when the wait is over."""
        if self._fd is not None:
            return
        deadline = time.monotonic() + timeout_s
        told = False
        delay = 0.005
        while True:
            fd = self._try_lock()
            if fd is not None:
                self._fd = fd
                self._say_who(fd, run_id)
                return
            holder = self.holder()
            if not told:
                told = True
                on_wait(one_line(f"waiting for the lock on {self.destination}: "
                                 f"{holder.describe()} is committing to it (waiting up to "
                                 f"{timeout_s:g} s)"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise DestinationBusy(one_line(
                    f"{what}: still locked after {timeout_s:g} s by {holder.describe()}; nothing "
                    f"was written, --resume loads the records (load.lock_timeout_s sets the wait)"))
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)

    def _try_lock(self) -> int | None:
        """The locked lock file's descriptor, or None when someone else holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _CLOEXEC | _NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if _busy(exc):
                    return None
                raise
            if _same_file(fd, self.path):
                return fd
            # The holder we waited for removed the lock file as it released it: the lock is
            # on whatever file the name holds now.
            os.close(fd)
        return None

    def _say_who(self, fd: int, run_id: str) -> None:
        info = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        except OSError:
            pass  # who holds it is a courtesy to waiters; the flock is what counts

    def holder(self) -> LockHolder:
        try:
            with open(self.path, "rb") as handle:
                data = json.loads(handle.read(4096) or b"{}")
        except (OSError, ValueError):
            return LockHolder()
        if not isinstance(data, dict):
            return LockHolder()
        pid = data.get("pid")
        return LockHolder(run_id=str(data["run_id"]) if data.get("run_id") else None,
                          pid=pid if isinstance(pid, int) else None,
                          host=str(data["host"]) if data.get("host") else None)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Removed while still held, so that nobody can lock the old file once it is gone;
        # a waiter that locked it meanwhile sees it is gone (_same_file) and tries again.
        try:
            if _same_file(fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


def claim_staging(path: Path) -> int:
    """Create (or take over, emptied) the staging file `path`, flocked for as long as the
    returned descriptor is open: that is what tells a sweep the file is in use."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC | _NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if not _busy(exc):
                raise
            # A sweep holds it for a moment, or another process writes this very run.
            time.sleep(0.01)
            continue
        if not _same_file(fd, path):
            os.close(fd)  # a sweep removed it between our open and our lock: again
            continue
        os.ftruncate(fd, 0)  # not at open: that would have emptied a live writer's file
        return fd
    raise ConnectorError(f"staging file {path} is held by another process: is this run "
                         f"running somewhere else?")


def sweep_staging(destination: Path) -> list[str]:
    """Remove the staging files of `destination` that no live process holds; their names."""
    return _unheld_staging(destination, remove=True)


def dead_staging(destination: Path) -> list[str]:
    """The staging files of `destination` that no live process holds, left where they are."""
    return _unheld_staging(destination, remove=False)


def _unheld_staging(destination: Path, *, remove: bool) -> list[str]:
    prefix = staging_prefix(destination)
    found: list[str] = []
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDONLY | _CLOEXEC | _NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, Path(entry.path)):
                if remove:
                    os.unlink(entry.path)
                found.append(name)
        except OSError:
            continue  # locked: a live run's
        finally:
            os.close(fd)
    return sorted(found)


def staging_run(destination: Path, name: str) -> str:
    """The run a staging file belongs to, from its name."""
    run = name[len(staging_prefix(destination)):-len(".tmp")]
    for part in (".rows", ".ready"):
        if run.endswith(part):
            run = run[:-len(part)]
    return run
