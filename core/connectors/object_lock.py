"""One committer at a time per S3 destination prefix, by a conditional write.

An S3 run's parts live under its own folder, so appends never collide; but a `replace` commit
deletes everything else under the prefix, including the parts of a run still writing there.
That run must find out before it writes `_SUCCESS` over a folder missing parts, and the check
and the `_SUCCESS` must not interleave with the replace's deletions: both commits hold
`PREFIX_loom.lock` (readers skip "_" names), created with `If-None-Match: *`, which S3 (and
S3-compatible stores that support conditional writes) grants to one writer only.

An object, unlike an flock, outlives a killed holder. It is taken over, with `If-Match` on its
ETag so that of several waiters one wins, when its holder is known dead — the same run (a
resume of the run whose killed attempt left it: one process runs a run at a time), or a process
of this machine that is gone (pid and start time, as claims tell) — or else once it is older
than `STALE_AFTER_S` (by the store's own clock: its Last-Modified against its Date header).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from botocore.exceptions import ClientError

from core.claims import host_name, process_alive, start_time
from core.errors import DestinationBusy, one_line

# A commit takes seconds (a replace deletes a page of keys a request); a lock this old is a
# dead run's.
STALE_AFTER_S = 300.0
LOCK_NAME = "_loom.lock"


def _dead(info: dict[str, Any], run_id: str) -> bool:
    """Whether the lock's holder is known to be gone: an earlier attempt of this very run, or
    a process of this machine that is no longer there."""
    if info.get("run_id") == run_id:
        return True
    pid = info.get("pid")
    if info.get("host") != host_name() or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    return not process_alive(pid, str(info.get("started") or ""))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _conflict(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


class ObjectCommitLock:
    """The commit lock of one prefix. acquire() then release(), once."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.key = f"{prefix}{LOCK_NAME}"
        self._etag: str | None = None
        self.unsupported = False

    async def acquire(self, *, run_id: str, timeout_s: float, what: str,
                      on_wait: Callable[[str], None]) -> None:
        body = json.dumps({"run_id": run_id, "pid": os.getpid(), "host": host_name(),
                           "started": start_time(os.getpid()),
                           "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        deadline = time.monotonic() + timeout_s
        told = False
        delay = 0.05
        while True:
            if await self._put(body, IfNoneMatch="*"):
                return
            holder, etag, age, info = await self._holder()
            if etag is None:
                await asyncio.sleep(0.01)  # released between our two requests: again
                continue
            dead = _dead(info, run_id) or (age is not None and age > STALE_AFTER_S)
            if dead and await self._put(body, IfMatch=etag):
                return  # a dead run's lock, taken over
            if not told:
                told = True
                on_wait(one_line(f"waiting for the lock on s3://{self.bucket}/{self.key}: "
                                 f"{holder} is committing there (waiting up to {timeout_s:g} s)"))
            left = deadline - time.monotonic()
            if left <= 0:
                raise DestinationBusy(one_line(
                    f"{what}: still locked after {timeout_s:g} s by {holder}; nothing was "
                    f"published, --resume writes the records (load.lock_timeout_s sets the wait)"))
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    async def _put(self, body: str, **condition: str) -> bool:
        try:
            answer = await self.client.put_object(Bucket=self.bucket, Key=self.key,
                                                  Body=body.encode("utf-8"), **condition)
        except ClientError as exc:
            if _conflict(exc):
                return False
            if _code(exc) == "NotImplemented" or exc.response.get(
                    "ResponseMetadata", {}).get("HTTPStatusCode") == 501:
                # A store without conditional writes: commits cannot be serialised there, as
                # before this lock existed.
                self.unsupported = True
                return True
            raise
        self._etag = answer.get("ETag")
        return True

    async def _holder(self) -> tuple[str, str | None, float | None, dict[str, Any]]:
        """(who holds it, as one line; its ETag, None when there is no lock; its age in s;
        what its body says)."""
        try:
            answer = await self.client.get_object(Bucket=self.bucket, Key=self.key)
            raw = await answer["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return "nobody", None, None, {}
            raise
        age = None
        date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        modified = answer.get("LastModified")
        if date and isinstance(modified, datetime):
            try:
                age = (parsedate_to_datetime(date) - modified).total_seconds()
            except (TypeError, ValueError):
                age = None
        try:
            info = json.loads(raw[:4096] or b"{}")
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
        holder = (f"run {info.get('run_id', '?')} (pid {info.get('pid', '?')} on "
                  f"{info.get('host', '?')})" if info else "another writer")
        return one_line(holder)[:200], answer.get("ETag"), age, info

    async def release(self) -> None:
        if self._etag is None:
            return
        self._etag = None
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except ClientError:
            pass  # a lock left behind is taken over once stale
