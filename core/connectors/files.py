"""CSV, JSON Lines and JSON files as sources and sinks.

Sources stream: a file is read a chunk of rows at a time in a worker thread (one thread hop per
chunk, not per row), so memory stays flat and the event loop stays free. A row that cannot be
read is yielded with its reason, to be quarantined at stage `extract`; it never ends the run
and is never dropped.

Sinks never touch the destination until `commit()`: rows go to a temp file beside it, which is
fsynced and renamed over the destination in one step (`os.replace`), so a crash leaves either
the old file or the new one, never half of each.
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import csv
import errno
import io
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from core.connectors.base import Sink, Source
from core.connectors.parsing import (
    PARSERS,
    RAW_LIMIT,
    Row,
    check_encoding,
    drain_in_thread,
    first_line as _first_line,
)
from core.errors import ConnectorError, LoadError

if TYPE_CHECKING:
    from core.connectors.registry import ParsedURI
    from core.spec import LoadedSpec

__all__ = ["RAW_LIMIT", "CsvSink", "CsvSource", "JsonSink", "JsonSource", "JsonlSink",
           "JsonlSource", "data_path"]

_READ_CHUNK = 1 << 20
_JSON_SPACE = b" \t\r\n"
_UTF8_BOM = codecs.BOM_UTF8


# ---------------------------------------------------------------- helpers


def data_path(loaded: "LoadedSpec", uri: "ParsedURI") -> Path:
    """`csv://data/x.csv` is relative to the pipeline's folder; `csv:///abs/x.csv` is absolute."""
    return loaded.resolve(uri.target)


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

    def _iter_rows(self) -> Iterator[Row]:
        """The file's rows, read synchronously (runs in a worker thread)."""
        with self._open_binary() as handle:
            yield from PARSERS[self.kind](handle, name=self.name, where=str(self.path),
                                          encoding=self.encoding)

    async def _rows(self) -> AsyncIterator[Row]:
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


class _FileSink(Sink):
    """Rows go to a temp file beside the destination; commit renames it into place."""

    kind = "file"

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self.path = data_path(loaded, uri)
        self._tmp: Path | None = None
        self._fd: int | None = None
        self._ready: Path | None = None  # the complete staged file, once prepare_commit made it
        self._lock = asyncio.Lock()
        # A cancelled await leaves its thread running: this keeps that thread's work and the
        # abort that follows from ever touching the file or connection at the same time.
        self._guard = threading.Lock()

    # -- hooks

    def _staging_name(self, run_id: str) -> str:
        return f".{self.path.name}.loom-{run_id}.tmp"

    def _begin(self) -> None:
        """Write what precedes this run's rows (a prefix, the existing rows when appending)."""

    @abc.abstractmethod
    def _encode(self, rows: list[dict[str, Any]]) -> tuple[bytes, Any]:
        """The batch's bytes, and the state to keep once they are written."""

    def _accept(self, state: Any) -> None:
        """The batch reached the disk: keep what `_encode` worked out."""

    def _finish(self) -> Path:
        """Complete and close the staged output; return the file to rename into place."""
        assert self._tmp is not None
        self._close(sync=True)
        return self._tmp

    # -- the Sink contract

    async def open(self, run_id: str) -> None:
        await super().open(run_id)
        if self.spec.mode == "upsert":
            raise ConnectorError(f"{self.kind} destination {self.path}: mode upsert needs a "
                                 f"sqlite or postgres destination")
        await asyncio.to_thread(self._serially, self._open_sync, _safe_run_id(run_id))

    def _open_sync(self, run_id: str) -> None:
        with self._or_discard():
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a folder, not a file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.parent / self._staging_name(run_id)
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._begin()

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
        self._accept(state)

    async def prepare_commit(self) -> str | None:
        async with self._lock:
            return await asyncio.to_thread(self._serially, self._prepare_sync)

    def _prepare_sync(self) -> str:
        """Complete the staged file; its identity tells later whether the rename happened."""
        self._complete()
        assert self._ready is not None
        with self._or_discard():
            return _identity(self._ready)

    async def committed(self, token: str | None) -> bool:
        if token is None:
            return False
        try:
            return await asyncio.to_thread(_identity, self.path) == token
        except OSError:
            return False

    def _complete(self) -> None:
        if self._ready is not None:
            return
        if self._fd is None:
            raise ConnectorError(f"{self.kind} destination {self.path}: commit() without open()")
        with self._or_discard():
            self._ready = self._finish()

    async def commit(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._serially, self._commit_sync)

    def _commit_sync(self) -> None:
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
        self._discard()  # the other temp files, if any

    async def abort(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._serially, self._discard)

    # -- plumbing

    def _serially(self, work: Callable[..., Any], *args: Any) -> Any:
        with self._guard:
            return work(*args)


    def _close(self, *, sync: bool) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _temp_paths(self) -> list[Path]:
        return [self._tmp] if self._tmp is not None else []

    def _discard(self) -> None:
        try:
            self._close(sync=False)
        except OSError:
            pass
        for path in self._temp_paths():
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        self._tmp = None
        self._ready = None

    def _write_raw(self, data: bytes) -> None:
        assert self._fd is not None
        _write_all(self._fd, data)

    def _copy_range(self, source: IO[bytes], start: int, end: int | None) -> None:
        """Copy source[start:end] into the temp file a chunk at a time."""
        source.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            size = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
            chunk = source.read(size)
            if not chunk:
                break
            self._write_raw(chunk)
            if remaining is not None:
                remaining -= len(chunk)

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


class JsonlSink(_FileSink):
    """One JSON object per line."""

    kind = "jsonl"

    def _begin(self) -> None:
        if not self._appending():
            return
        with open(self.path, "rb") as existing:
            size = existing.seek(0, os.SEEK_END)
            self._copy_range(existing, 0, None)
            if size:
                existing.seek(size - 1)
                if existing.read(1) != b"\n":
                    self._write_raw(b"\n")

    def _encode(self, rows: list[dict[str, Any]]) -> tuple[bytes, Any]:
        encode = self._encode_json
        try:
            text = "".join([encode(row) + "\n" for row in rows])
        except (TypeError, ValueError) as exc:
            raise LoadError(f"jsonl destination {self.path}: cannot encode a row: {exc}") from exc
        return self._utf8(text), None


class JsonSink(_FileSink):
    """A JSON array, one element per line."""

    kind = "json"

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self._has_elements = False

    def _begin(self) -> None:
        self._has_elements = False
        self._write_raw(b"[")
        if not self._appending():
            return
        with open(self.path, "rb") as existing:
            bounds = _array_bounds(existing)
            if bounds is None:
                raise ConnectorError(f"json destination {self.path}: cannot append: the file is "
                                     f"not a JSON array")
            inner_start, inner_end = bounds
            if inner_end > inner_start:
                self._copy_range(existing, inner_start, inner_end)
                self._has_elements = True

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
        self._write_raw(b"\n]\n" if self._has_elements else b"]\n")
        return super()._finish()


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

    def __init__(self, loaded: "LoadedSpec", uri: "ParsedURI") -> None:
        super().__init__(loaded, uri)
        self._columns: dict[str, None] = {}  # an ordered set: first-seen order
        self._output: Path | None = None

    def _staging_name(self, run_id: str) -> str:
        return f".{self.path.name}.loom-{run_id}.rows.tmp"

    def _begin(self) -> None:
        self._columns = {}
        self._output = self.path.parent / f".{self.path.name}.loom-{_safe_run_id(self.run_id)}.tmp"

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

    def _temp_paths(self) -> list[Path]:
        return super()._temp_paths() + ([self._output] if self._output is not None else [])

    def _finish(self) -> Path:
        assert self._tmp is not None and self._output is not None
        self._close(sync=False)  # the staging file is scratch: it needs no fsync
        existing_header = self._existing_header() if self._appending() else None
        columns = list(existing_header or [])
        known = set(columns)
        columns += [c for c in self._columns if c not in known]
        with open(self._output, "wb") as binary:
            out = io.TextIOWrapper(binary, encoding="utf-8", newline="", errors="surrogateescape")
            writer = csv.writer(out, lineterminator="\n")
            if existing_header is None:
                if columns:
                    writer.writerow(columns)
            elif len(columns) == len(existing_header):
                self._copy_existing_bytes(binary)  # same columns: old rows go across byte for byte
            else:
                self._rewrite_existing(writer, columns)
            with open(self._tmp, "r", encoding="utf-8", newline="\n") as staged:
                loads = json.loads
                cell = _csv_cell
                for line in staged:
                    row = loads(line)
                    writer.writerow([cell(row.get(column)) for column in columns])
            out.flush()
            os.fsync(binary.fileno())
            out.detach()
        return self._output

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
