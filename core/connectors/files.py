"""CSV, JSON Lines and JSON files as sources and sinks.

Sources stream: a file is read a chunk of rows at a time in a worker thread (one thread hop per
chunk, not per row), so memory stays flat and the event loop stays free. A row that cannot be
read is yielded with its reason, to be quarantined at stage `extract`; it never ends the run
and is never dropped.

Sinks never touch the destination until `commit()`: rows go to a staging file beside it, and
the commit joins them to the destination as it is then and renames the result over it in one
step (`os.replace`), so a crash leaves either the old file or the new one, never half of each.
The commit holds the destination's lock (core.connectors.file_lock), so that runs writing one
file at once each add their rows instead of the last rename dropping the others'.
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import csv
import errno
import hashlib
import io
import json
import os
import re
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from core.connectors.base import Sink, Source
from core.connectors.file_lock import (DestinationLock, claim_staging, dead_staging,
                                       staging_prefix, staging_run, sweep_staging)
from core.connectors.parsing import (
    PARSERS,
    RAW_LIMIT,
    Row,
    RowStream,
    check_encoding,
    drain_in_thread,
    first_line as _first_line,
)
from core.crashpoints import crash_point
from core.errors import ConnectorError, LoadError, one_line

if TYPE_CHECKING:
    from core.connectors.registry import ParsedURI
    from core.spec import LoadedSpec

__all__ = ["RAW_LIMIT", "CsvSink", "CsvSource", "JsonSink", "JsonSource", "JsonlSink",
           "JsonlSource", "data_path", "leftover_staging"]

_READ_CHUNK = 1 << 20
_JSON_SPACE = b" \t\r\n"
_UTF8_BOM = codecs.BOM_UTF8


# ---------------------------------------------------------------- helpers


def data_path(loaded: "LoadedSpec", uri: "ParsedURI") -> Path:
    """`csv://data/x.csv` is relative to the pipeline's folder; `csv:///abs/x.csv` is absolute."""
    return loaded.resolve(uri.target)


def leftover_staging(loaded: "LoadedSpec") -> tuple[Path, list[str]] | None:
    """For a file destination: the destination, and the runs that died leaving staging files
    beside it (the next run to it removes them); None for other destinations."""
    from core.connectors.registry import parse_uri

    uri = parse_uri(loaded.spec.load.destination)
    if not uri.is_local_file:
        return None
    path = data_path(loaded, uri)
    return path, sorted({staging_run(path, name) for name in dead_staging(path)})


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk; not every system allows it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# A write that fails this way will fail for every batch after it: the run stops (one clear
# error) instead of quarantining batch after batch.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _identity(path: Path) -> str:
    """What tells a file apart: a rename keeps all four, a new file has another inode."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _safe_run_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(run_id))[:64] or "run"


# ---------------------------------------------------------------- sources


class _FileSource(Source):
    """A local file parsed by core.connectors.parsing, drained a chunk at a time in a thread."""

    kind = "file"

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.path = data_path(loaded, uri)
        self.name = self.path.name
        self.encoding = check_encoding(self.spec.encoding or "utf-8")
        # Enough rows per hop to amortise it, few enough that a 5-row preview reads little.
        self._chunk = min(max(self.batch_size, 64), 2048)

    def _cannot_read(self, exc: OSError) -> ConnectorError:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
        return ConnectorError(f"{self.kind} source {self.path}: cannot read: {reason}")

    def _open_binary(self) -> IO[bytes]:
        try:
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a folder, not a file")
            return open(self.path, "rb")
        except OSError as exc:
            raise self._cannot_read(exc) from None

    def _iter_rows(self) -> RowStream:
        """The file's rows, read synchronously (runs in a worker thread)."""
        with self._open_binary() as handle:
            yield from PARSERS[self.kind](handle, name=self.name, where=str(self.path),
                                          encoding=self.encoding)

    async def _rows(self) -> AsyncGenerator[Row, None]:
        rows = drain_in_thread(self._iter_rows(), self._chunk)
        try:
            async for item in rows:
                yield item
        except OSError as exc:
            raise self._cannot_read(exc) from None
        finally:
            await rows.aclose()

    def _count_lines(self) -> int:
        lines = 0
        last = b""
        with self._open_binary() as handle:
            while chunk := handle.read(_READ_CHUNK):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if last and last != b"\n":
            lines += 1  # a last line without its newline
        return lines


class CsvSource(_FileSource):
    """A CSV file with a header row. Values stay the strings they are in the file."""

    kind = "csv"

    async def count_hint(self) -> int | None:
        lines = await asyncio.to_thread(self._count_lines)
        return max(lines - 1, 0)


class JsonlSource(_FileSource):
    """One JSON object per line; blank lines are skipped."""

    kind = "jsonl"

    async def count_hint(self) -> int | None:
        return await asyncio.to_thread(self._count_lines)


class JsonSource(_FileSource):
    """A top-level JSON array of objects, parsed incrementally with ijson."""

    kind = "json"


def _first_significant(handle: IO[bytes]) -> tuple[bytes, int, int]:
    """(first byte that is not a BOM or whitespace, its offset, the offset after any BOM).

    The byte is b"" for a file with nothing in it.
    """
    handle.seek(0)
    start = len(_UTF8_BOM) if handle.read(len(_UTF8_BOM)) == _UTF8_BOM else 0
    position = handle.seek(start)
    while chunk := handle.read(65536):
        stripped = chunk.lstrip(_JSON_SPACE)
        if stripped:
            return stripped[:1], position + len(chunk) - len(stripped), start
        position += len(chunk)
    return b"", position, start


# ---------------------------------------------------------------- sinks


@dataclass(frozen=True, slots=True)
class _Mark:
    """What one commit adds to the destination, so that a resumed run can find it again after
    other runs appended to the file (which changes its inode, size and mtime): the bytes of its
    rows, where they start and their digest. A CSV whose later appends brought new columns has
    its old rows rewritten (padded), so a CSV commit also keeps a digest of its rows' cells."""

    offset: int
    length: int
    sha256: str
    rows: int | None = None
    first_row: str | None = None
    rows_sha256: str | None = None


class _FileSink(Sink):
    """This run's rows go to a staging file beside the destination; the commit, holding the
    destination's lock (core.connectors.file_lock), joins them to the destination as it is at
    that moment and renames the result into place."""

    kind = "file"
    _staging_part = ""  # the staging file's name: .NAME.loom-RUN<part>.tmp

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.path = data_path(loaded, uri)
        self._run_name = "run"
        self._tmp: Path | None = None  # this run's rows, staged
        self._fd: int | None = None  # the staged rows' writing descriptor
        # Every staging file this sink made, with the descriptor whose flock says "in use".
        self._claims: dict[Path, int] = {}
        self._ready: Path | None = None  # the complete file, once prepare_commit made it
        self._token: str | None = None
        self._mark: _Mark | None = None
        self._block = hashlib.sha256()  # of every batch's bytes, as staged
        self._block_len = 0
        self._destination_lock = DestinationLock(self.path)
        self._lock = asyncio.Lock()
        # A cancelled await leaves its thread running: this keeps that thread's work and the
        # abort that follows from ever touching the file or connection at the same time.
        self._guard = threading.Lock()

    # -- hooks

    def _begin(self) -> None:
        """Write what precedes this run's rows in its staging file, check the destination."""

    @abc.abstractmethod
    def _encode(self, rows: list[dict[str, Any]]) -> tuple[bytes, Any]:
        """The batch's bytes, and the state to keep once they are written."""

    def _accept(self, state: Any) -> None:
        """The batch reached the disk: keep what `_encode` worked out."""

    @abc.abstractmethod
    def _finish(self) -> Path:
        """Under the destination's lock: the file to rename into place (the destination as it
        is now with this run's rows added, or only them), complete and fsynced; sets _mark."""

    def _holds_rows(self, mark: dict[str, Any]) -> bool:
        """Whether the destination holds the commit's rows somewhere other than byte for byte
        where it put them (a format whose old rows a later append may rewrite)."""
        return False

    # -- the Sink contract

    async def open(self, run_id: str) -> None:
        await super().open(run_id)
        if self.spec.mode == "upsert":
            raise ConnectorError(f"{self.kind} destination {self.path}: mode upsert needs a "
                                 f"sqlite or postgres destination")
        swept = await asyncio.to_thread(self._serially, self._open_sync, _safe_run_id(run_id))
        mine = f"{staging_prefix(self.path)}{self._run_name}."
        others = [name for name in swept if not name.startswith(mine)]
        if others:
            runs = sorted({staging_run(self.path, name) for name in others})
            shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
            self.notify(one_line(
                f"removed {len(others)} staging file{'s' if len(others) != 1 else ''} beside "
                f"{self.path} left by runs that are no longer running ({shown})"))

    def _open_sync(self, run_id: str) -> list[str]:
        self._run_name = run_id
        with self._or_discard():
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a folder, not a file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A run that died (kill -9, a lost machine) left its staging files: the first run
            # to open this destination after it takes them away, never a live run's.
            swept = sweep_staging(self.path)
            self._tmp = self._part(self._staging_part)
            self._fd = self._claim(self._tmp)
            self._block = hashlib.sha256()
            self._block_len = 0
            self._begin()
        return swept

    @contextmanager
    def _or_discard(self) -> Iterator[None]:
        """A step that fails leaves nothing staged behind, and its error names the destination."""
        try:
            yield
        except OSError as exc:
            self._discard()
            raise ConnectorError(f"{self.kind} destination {self.path}: cannot write: "
                                 f"{exc.strerror or exc}") from None
        except ConnectorError:
            self._discard()
            raise

    async def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        async with self._lock:
            await asyncio.to_thread(self._serially, self._write_sync, rows)

    def _write_sync(self, rows: list[dict[str, Any]]) -> None:
        if self._fd is None:
            raise ConnectorError(f"{self.kind} destination {self.path}: write() before open()")
        payload, state = self._encode(rows)
        position = os.lseek(self._fd, 0, os.SEEK_CUR)
        try:
            _write_all(self._fd, payload)
        except OSError as exc:
            # Cut the partial batch off so the file holds only whole batches.
            try:
                os.ftruncate(self._fd, position)
                os.lseek(self._fd, position, os.SEEK_SET)
            except OSError:
                pass
            error = ConnectorError if exc.errno in _NO_ROOM else LoadError
            raise error(f"{self.kind} destination {self.path}: cannot write: "
                        f"{exc.strerror or exc}") from exc
        self._block.update(payload)
        self._block_len += len(payload)
        self._accept(state)

    async def prepare_commit(self) -> str | None:
        """Take the destination's lock (held until commit or abort) and build the file to
        rename; the token says what the commit adds, so that `committed` finds it again."""
        async with self._lock:
            await self._lock_destination()
            return await asyncio.to_thread(self._serially, self._prepare_sync)

    async def lock_destination(self) -> None:
        """Take the destination's lock now (held until commit or abort), for a writer that reads
        the destination before it stages its rows (a quarantine action rewriting a `replace`
        file): what it read cannot change before its commit."""
        async with self._lock:
            await self._lock_destination()

    async def _lock_destination(self) -> None:
        try:
            await self._destination_lock.acquire(
                run_id=str(self.run_id), timeout_s=self.spec.lock_timeout_s,
                what=f"{self.kind} destination {self.path}", on_wait=self.notify)
        except OSError as exc:
            raise ConnectorError(f"{self.kind} destination {self.path}: cannot lock "
                                 f"{self._destination_lock.path}: {exc.strerror or exc}") from None

    def _prepare_sync(self) -> str | None:
        try:
            self._complete()
        except BaseException:
            self._destination_lock.release()
            raise
        return self._token

    async def committed(self, token: str | None) -> bool:
        if token is None:
            return False
        return await asyncio.to_thread(self._committed_sync, token)

    def _committed_sync(self, token: str) -> bool:
        try:
            current = _identity(self.path)
            if not token.startswith("{"):
                return current == token  # a token from before marks: the file's identity
            mark = json.loads(token)
            if current == mark.get("file"):
                return True  # nobody wrote the file since
            if not mark.get("length"):
                return False
            return self._holds_block(mark) or self._holds_rows(mark)
        except (OSError, ValueError, TypeError, KeyError):
            return False

    def _holds_block(self, mark: dict[str, Any]) -> bool:
        """Whether the destination has the commit's bytes where the commit put them (an append
        after it leaves them there: it copies the file as it is and adds to the end)."""
        digest = hashlib.sha256()
        remaining = int(mark["length"])
        with open(self.path, "rb") as handle:
            handle.seek(int(mark["offset"]))
            while remaining > 0:
                chunk = handle.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    return False
                digest.update(chunk)
                remaining -= len(chunk)
        return digest.hexdigest() == str(mark["sha256"])

    def _complete(self) -> None:
        if self._ready is not None:
            return
        if self._fd is None:
            raise ConnectorError(f"{self.kind} destination {self.path}: commit() without open()")
        with self._or_discard():
            ready = self._finish()
            assert self._mark is not None
            self._token = json.dumps({"v": 2, "file": _identity(ready), **asdict(self._mark)},
                                     separators=(",", ":"))
            self._ready = ready

    async def commit(self) -> None:
        async with self._lock:
            if self._ready is None:
                await self._lock_destination()  # a commit without prepare_commit
            await asyncio.to_thread(self._serially, self._commit_sync)

    def _commit_sync(self) -> None:
        try:
            self._complete()
            with self._or_discard():
                ready = self._ready
                assert ready is not None
                if self.path.exists():
                    try:
                        os.chmod(ready, self.path.stat().st_mode & 0o7777)
                    except OSError:
                        pass
                os.replace(ready, self.path)
                _fsync_dir(self.path.parent)
                # A crash after the rename, before the store hears of it, cannot be timed
                # from outside (tests/integration/test_concurrent_file_writers.py).
                crash_point("file:renamed")
            self._discard()  # the other staging files, if any
        finally:
            self._destination_lock.release()

    async def abort(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._serially, self._abort_sync)

    def _abort_sync(self) -> None:
        try:
            self._discard()
        finally:
            self._destination_lock.release()

    # -- plumbing

    def _serially(self, work: Callable[..., Any], *args: Any) -> Any:
        with self._guard:
            return work(*args)

    def _part(self, part: str) -> Path:
        return self.path.parent / f"{staging_prefix(self.path)}{self._run_name}{part}.tmp"

    def _claim(self, path: Path) -> int:
        """A new staging file, flocked until _discard; returns a descriptor to write with
        (closing it keeps the claim)."""
        fd = claim_staging(path)
        self._claims[path] = fd
        return os.dup(fd)

    def _close(self, *, sync: bool) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _discard(self) -> None:
        try:
            self._close(sync=False)
        except OSError:
            pass
        claims, self._claims = self._claims, {}
        for path, fd in claims.items():
            try:
                path.unlink(missing_ok=True)  # (a renamed one is the destination now: gone)
            except OSError:
                pass
            finally:
                os.close(fd)
        self._tmp = None
        self._ready = None

    def _write_raw(self, data: bytes) -> None:
        assert self._fd is not None
        _write_all(self._fd, data)

    def _appending(self) -> bool:
        return self.spec.mode == "append" and self.path.is_file()

    def _encode_json(self, row: dict[str, Any]) -> str:
        return json.dumps(row, ensure_ascii=False, default=str, allow_nan=False)

    def _utf8(self, text: str) -> bytes:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LoadError(f"{self.kind} destination {self.path}: a value holds text that is "
                            f"not valid Unicode ({exc.reason})") from exc


def _copy_into(fd: int, source: IO[bytes], start: int = 0, end: int | None = None) -> bytes:
    """Copy source[start:end] to `fd` a chunk at a time; returns the last byte copied."""
    source.seek(start)
    remaining = None if end is None else end - start
    last = b""
    while remaining is None or remaining > 0:
        size = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
        chunk = source.read(size)
        if not chunk:
            break
        _write_all(fd, chunk)
        last = chunk[-1:]
        if remaining is not None:
            remaining -= len(chunk)
    return last


class JsonlSink(_FileSink):
    """One JSON object per line."""

    kind = "jsonl"

    def _encode(self, rows: list[dict[str, Any]]) -> tuple[bytes, Any]:
        encode = self._encode_json
        try:
            text = "".join([encode(row) + "\n" for row in rows])
        except (TypeError, ValueError) as exc:
            raise LoadError(f"jsonl destination {self.path}: cannot encode a row: {exc}") from exc
        return self._utf8(text), None

    def _finish(self) -> Path:
        assert self._tmp is not None
        digest = self._block.hexdigest()
        if not self._appending():
            self._close(sync=True)  # the staged rows are the whole new file
            self._mark = _Mark(0, self._block_len, digest)
            return self._tmp
        self._close(sync=False)  # scratch: copied into the file that is renamed
        ready = self._part(".ready")
        fd = self._claim(ready)
        try:
            with open(self.path, "rb") as existing:
                last = _copy_into(fd, existing)
            if last not in (b"", b"\n"):
                _write_all(fd, b"\n")
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            with open(self._tmp, "rb") as staged:
                _copy_into(fd, staged)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._mark = _Mark(offset, self._block_len, digest)
        return ready


class JsonSink(_FileSink):
    """A JSON array, one element per line."""

    kind = "json"

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self._has_elements = False

    def _begin(self) -> None:
        self._has_elements = False
        self._write_raw(b"[")
        if self._appending():
            self._bounds()  # refused at open rather than at the end of the run

    def _bounds(self) -> tuple[int, int]:
        with open(self.path, "rb") as existing:
            bounds = _array_bounds(existing)
        if bounds is None:
            raise ConnectorError(f"json destination {self.path}: cannot append: the file is "
                                 f"not a JSON array")
        return bounds

    def _encode(self, rows: list[dict[str, Any]]) -> tuple[bytes, Any]:
        encode = self._encode_json
        try:
            parts = [encode(row) for row in rows]
        except (TypeError, ValueError) as exc:
            raise LoadError(f"json destination {self.path}: cannot encode a row: {exc}") from exc
        text = ("," if self._has_elements else "") + "\n" + ",\n".join(parts)
        return self._utf8(text), True

    def _accept(self, state: Any) -> None:
        self._has_elements = True

    def _finish(self) -> Path:
        # The staging file is "[" and this run's elements (the block); the array's close last.
        assert self._tmp is not None
        digest = self._block.hexdigest()
        if not self._appending():
            self._write_raw(b"\n]\n" if self._has_elements else b"]\n")
            self._close(sync=True)
            self._mark = _Mark(1, self._block_len, digest)
            return self._tmp
        self._close(sync=False)
        inner_start, inner_end = self._bounds()
        had_elements = inner_end > inner_start
        ready = self._part(".ready")
        fd = self._claim(ready)
        try:
            _write_all(fd, b"[")
            with open(self.path, "rb") as existing:
                _copy_into(fd, existing, inner_start, inner_end)
            if had_elements and self._has_elements:
                _write_all(fd, b",")
            offset = os.lseek(fd, 0, os.SEEK_CUR)
            with open(self._tmp, "rb") as staged:
                _copy_into(fd, staged, 1)
            _write_all(fd, b"\n]\n" if had_elements or self._has_elements else b"]\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._mark = _Mark(offset, self._block_len, digest)
        return ready


def _array_bounds(handle: IO[bytes]) -> tuple[int, int] | None:
    """Offsets of an array file's elements: after "[" to the last non-space before "]".

    (start, start) for an empty array (or an empty file); None when the file is not an array.
    Reads only the two ends of the file.
    """
    first, open_at, _ = _first_significant(handle)
    if not first:
        return (0, 0)
    if first != b"[":
        return None
    end = handle.seek(0, os.SEEK_END)
    close_at = _last_significant(handle, end)
    if close_at is None or close_at <= open_at:
        return None
    handle.seek(close_at)
    if handle.read(1) != b"]":
        return None
    inner_last = _last_significant(handle, close_at, floor=open_at + 1)
    if inner_last is None:
        return (open_at + 1, open_at + 1)
    return (open_at + 1, inner_last + 1)


def _last_significant(handle: IO[bytes], end: int, floor: int = 0) -> int | None:
    """Offset of the last non-whitespace byte before `end` (and at or after `floor`)."""
    position = end
    while position > floor:
        size = min(65536, position - floor)
        position -= size
        handle.seek(position)
        chunk = handle.read(size)
        stripped = chunk.rstrip(_JSON_SPACE)
        if stripped:
            return position + len(stripped) - 1
    return None


class CsvSink(_FileSink):
    """A CSV file whose header is the union of every row's keys.

    The columns are known only at the end (a later row may carry a key earlier ones lacked), so
    rows are staged as JSON Lines while the run goes and the CSV is written in one pass at commit.
    """

    kind = "csv"
    _staging_part = ".rows"

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self._columns: dict[str, None] = {}  # an ordered set: first-seen order

    def _begin(self) -> None:
        self._columns = {}

    def _encode(self, rows: list[dict[str, Any]]) -> tuple[bytes, Any]:
        encode = self._encode_json
        new: dict[str, None] = {}
        lines = []
        try:
            for row in rows:
                for key in row:
                    if key not in self._columns:
                        new[str(key)] = None
                lines.append(encode(row))
        except (TypeError, ValueError) as exc:
            raise LoadError(f"csv destination {self.path}: cannot encode a row: {exc}") from exc
        lines.append("")
        return self._utf8("\n".join(lines)), new

    def _accept(self, state: Any) -> None:
        self._columns.update(state)

    def _finish(self) -> Path:
        assert self._tmp is not None
        self._close(sync=False)  # the staging file is scratch: it needs no fsync
        existing_header = self._existing_header() if self._appending() else None
        columns = list(existing_header or [])
        known = set(columns)
        columns += [c for c in self._columns if c not in known]
        output = self._part("")
        rows_digest = hashlib.sha256()
        first_row: str | None = None
        count = 0
        with open(self._claim(output), "wb") as binary:
            out = io.TextIOWrapper(binary, encoding="utf-8", newline="", errors="surrogateescape")
            writer = csv.writer(out, lineterminator="\n")
            if existing_header is None:
                if columns:
                    writer.writerow(columns)
            elif len(columns) == len(existing_header):
                self._copy_existing_bytes(binary)  # same columns: old rows go across byte for byte
            else:
                self._rewrite_existing(writer, columns)
            out.flush()
            offset = binary.tell()
            with open(self._tmp, "r", encoding="utf-8", newline="\n") as staged:
                loads = json.loads
                cell = _csv_cell
                for line in staged:
                    row = loads(line)
                    cells = [cell(row.get(column)) for column in columns]
                    writer.writerow(cells)
                    digest = _row_digest(cells)
                    first_row = first_row or digest.hex()
                    rows_digest.update(digest)
                    count += 1
            out.flush()
            end = binary.tell()
            os.fsync(binary.fileno())
            out.detach()
        block = hashlib.sha256()
        with open(output, "rb") as written:
            written.seek(offset)
            while chunk := written.read(_READ_CHUNK):
                block.update(chunk)
        self._mark = _Mark(offset, end - offset, block.hexdigest(), rows=count,
                           first_row=first_row, rows_sha256=rows_digest.hexdigest())
        return output

    def _holds_rows(self, mark: dict[str, Any]) -> bool:
        """The commit's rows, in order, anywhere after the header, compared cell by cell with
        trailing empty cells ignored: a later append with new columns rewrote them padded."""
        count, first, wanted = mark.get("rows"), mark.get("first_row"), mark.get("rows_sha256")
        if not count or not first or not wanted:
            return False
        window: deque[bytes] = deque(maxlen=int(count))
        first_bytes = bytes.fromhex(first)
        with open(self.path, "r", encoding="utf-8-sig", newline="", errors="surrogateescape") as f:
            reader = csv.reader(f)
            try:
                next(reader, None)  # the header
                for values in reader:
                    if not values:
                        continue
                    window.append(_row_digest(values))
                    if len(window) == count and window[0] == first_bytes and \
                            hashlib.sha256(b"".join(window)).hexdigest() == wanted:
                        return True
            except csv.Error:
                return False
        return False

    def _existing_header(self) -> list[str] | None:
        with open(self.path, "r", encoding="utf-8-sig", newline="", errors="surrogateescape") as f:
            try:
                for header in csv.reader(f):
                    if header:
                        return header
            except csv.Error as exc:
                raise ConnectorError(f"csv destination {self.path}: cannot append: the existing "
                                     f"header is malformed: {_first_line(exc)}") from None
        return None  # an empty file: written as new

    def _copy_existing_bytes(self, out: IO[bytes]) -> None:
        with open(self.path, "rb") as existing:
            last = b""
            while chunk := existing.read(_READ_CHUNK):
                out.write(chunk)
                last = chunk[-1:]
            if last not in (b"", b"\n", b"\r"):
                out.write(b"\n")

    def _rewrite_existing(self, writer: Any, columns: list[str]) -> None:
        # New columns: every old row is padded so each line has the header's field count.
        width = len(columns)
        with open(self.path, "r", encoding="utf-8-sig", newline="", errors="surrogateescape") as f:
            reader = csv.reader(f)
            writer.writerow(columns)
            try:
                seen_header = False
                for values in reader:
                    if not values:
                        continue
                    if not seen_header:
                        seen_header = True
                        continue
                    if len(values) < width:
                        values = values + [""] * (width - len(values))
                    writer.writerow(values)
            except csv.Error as exc:
                raise ConnectorError(f"csv destination {self.path}: cannot append: line "
                                     f"{reader.line_num} is malformed: {_first_line(exc)}") from None


def _row_digest(cells: list[str]) -> bytes:
    """A CSV row's cells, trailing empty ones dropped (what padding for new columns adds)."""
    while cells and cells[-1] == "":
        cells = cells[:-1]
    return hashlib.sha256(json.dumps(cells, separators=(",", ":")).encode("ascii")).digest()[:16]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    return str(value)
