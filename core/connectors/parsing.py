"""Rows out of CSV, JSON Lines and JSON byte streams: the parsers every row source shares.

Local files (core.connectors.files) and object stores (core.connectors.s3) hand these a binary
stream; each parser reads it incrementally, so memory stays flat whatever the size, and yields
(row, origin, error). A row that cannot be read is yielded with its reason, to be quarantined at
stage `extract`; it never ends the run and is never dropped. The parsers are synchronous: a
source drains them a chunk of rows at a time in a worker thread (`drain_in_thread`), one thread
hop per chunk rather than per row, so the event loop stays free.

Streams need only `read` (and `readinto` when wrapped for text): nothing here seeks.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import IO, Any

import ijson

from core.errors import ConnectorError

RAW_LIMIT = 10_240  # how much of an unreadable row the quarantine keeps
# How deep a record (or a model's JSON answer) may nest: objects and arrays inside one another.
# The record itself is level 1. Deeper ones are quarantined with their reason, never parsed
# further (Python's own parsers recurse, and a 2 KB line can nest a thousand levels).
MAX_NESTING = 64
FORMATS = ("csv", "jsonl", "json")
# Python's default CSV field limit (128 kB) would quarantine every row holding a long document.
_CSV_FIELD_LIMIT = 64 << 20
_SURROGATES = re.compile("[\udc80-\udcff]")
_JSON_SPACE = b" \t\r\n"
_UTF8_BOM = codecs.BOM_UTF8
_PROBE = 65536

Row = tuple[dict[str, Any] | None, str, str | None]
RowStream = Generator[Row, None, None]  # a parser's rows, closed when the reader stops
Parser = Callable[..., RowStream]


# ---------------------------------------------------------------- helpers


def clip(text: str) -> str:
    return text if len(text) <= RAW_LIMIT else text[:RAW_LIMIT]


def has_surrogates(text: str) -> bool:
    """True when `text` holds bytes that did not decode (surrogateescape leaves them as surrogates)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def make_safe(text: str) -> str:
    return _SURROGATES.sub("\ufffd", text)


_ANY_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """`text` with every lone surrogate (which no UTF-8 store or file can hold) as U+FFFD."""
    return text if text.isascii() else _ANY_SURROGATE.sub("\ufffd", text)


def not_json_constant(name: str) -> Any:
    """json.loads(parse_constant=...): NaN and Infinity are not JSON, whatever Python allows."""
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


def too_deep(limit: int = MAX_NESTING) -> str:
    return f"nested deeper than {limit} levels"


def value_problem(value: Any, *, check_depth: bool = True, check_text: bool = True,
                  limit: int = MAX_NESTING) -> str | None:
    """Why a parsed JSON value cannot go on (nested deeper than `limit`, or a string or key
    holding a lone surrogate, which no UTF-8 text can hold), or None. Iterative: any depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if check_depth and depth > limit:
                return too_deep(limit)
            for key, child in item.items():
                if check_text and isinstance(key, str) and has_surrogates(key):
                    return f"the key {make_safe_repr(key)} holds a lone surrogate (not Unicode text)"
                if isinstance(child, (dict, list)):
                    stack.append((child, depth + 1))
                elif check_text and isinstance(child, str) and has_surrogates(child):
                    return (f"the value of {make_safe_repr(key)} holds a lone surrogate "
                            f"(not Unicode text)")
        elif isinstance(item, list):
            if check_depth and depth > limit:
                return too_deep(limit)
            for child in item:
                if isinstance(child, (dict, list)):
                    stack.append((child, depth + 1))
                elif check_text and isinstance(child, str) and has_surrogates(child):
                    return "a value holds a lone surrogate (not Unicode text)"
        elif check_text and isinstance(item, str) and has_surrogates(item):
            return "the value holds a lone surrogate (not Unicode text)"
    return None


def make_safe_repr(text: Any) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def loads_checked(text: str) -> tuple[Any, str | None]:
    """(value, None) for JSON text that Loom can carry, or (None, why not): invalid JSON,
    NaN/Infinity, nested deeper than MAX_NESTING, or a lone surrogate from a \\u escape.
    The checks that walk the value run only when the text could need them."""
    try:
        value = json.loads(text, parse_constant=not_json_constant)
    except RecursionError:
        return None, too_deep()
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    except ValueError as exc:
        return None, f"invalid JSON: {first_line(exc)}"
    deep = text.count("[") + text.count("{") > MAX_NESTING
    escapes = "\\u" in text
    if deep or escapes:
        problem = value_problem(value, check_depth=deep, check_text=escapes)
        if problem is not None:
            return None, problem
    return value, None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    except LookupError:
        return False


def check_encoding(encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConnectorError(f"extract.encoding: unknown encoding {encoding!r}") from None
    return encoding


def _take(rows: Iterator[Row], count: int) -> list[Row]:
    return list(itertools.islice(rows, count))


async def drain_in_thread(rows: RowStream, chunk: int) -> AsyncGenerator[Row, None]:
    """Yield a synchronous parser's rows, reading `chunk` of them per worker-thread hop."""
    try:
        while True:
            taken = await asyncio.to_thread(_take, rows, chunk)
            for item in taken:
                yield item
            if len(taken) < chunk:
                return
    finally:
        try:
            rows.close()
        except ValueError:
            pass  # still running in a cancelled thread: it closes its stream when collected


def _text(stream: IO[bytes], encoding: str, newline: str) -> io.TextIOWrapper:
    # A BOM is not part of the first column's name: utf-8-sig drops it when present.
    return io.TextIOWrapper(stream,
                            encoding="utf-8-sig" if is_utf8(encoding) else encoding,
                            errors="surrogateescape", newline=newline)


# ---------------------------------------------------------------- CSV


def csv_rows(stream: IO[bytes], *, name: str, where: str, encoding: str = "utf-8") -> RowStream:
    """A CSV with a header row; values stay the strings they are. `name` starts each row's
    origin ("reviews.csv:17"), `where` names the source in errors."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    encoding_label = "UTF-8" if is_utf8(encoding) else encoding
    handle = _text(stream, encoding, newline="")
    pending: list[str] = []  # the physical lines of the row being parsed, for `_raw`

    def tap() -> Iterator[str]:
        for line in handle:
            pending.append(line)
            yield line

    # strict: a stray quote is a malformed row to quarantine, not a value to guess at.
    reader = csv.reader(tap(), strict=True)
    header: list[str] | None = None
    width = 0
    line_end = 0
    while True:
        start = line_end + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_end = reader.line_num
            raw = "".join(pending)
            pending.clear()
            if header is None:
                raise ConnectorError(f"csv source {where}: the header row is malformed: "
                                     f"{first_line(exc)}") from None
            yield ({"_raw": clip(make_safe(raw))}, f"{name}:{start}",
                   f"malformed CSV row at line {start}: {first_line(exc)}")
            continue
        line_end = reader.line_num
        if header is None:
            pending.clear()
            if not values:
                continue  # blank lines before the header
            header = _csv_header(values, where)
            width = len(header)
            continue
        if not values:
            pending.clear()
            continue  # a blank line
        origin = f"{name}:{start}"
        # A NUL byte means a binary or mis-encoded file (and no database text holds one).
        if any("\x00" in line for line in pending):
            raw = "".join(pending)
            pending.clear()
            yield ({"_raw": clip(make_safe(raw.replace("\x00", "\\x00")))}, origin,
                   f"malformed CSV row at line {start}: NUL byte")
            continue
        ascii_only = all(line.isascii() for line in pending)
        if len(values) != width:
            raw = "".join(pending)
            pending.clear()
            yield ({"_raw": clip(make_safe(raw))}, origin,
                   f"line {start}: the row has {len(values)} fields, the header has {width}")
            continue
        pending.clear()
        row = dict(zip(header, values))
        if not ascii_only:
            bad = [column for column, value in row.items() if has_surrogates(value)]
            if bad:
                for column in bad:
                    row[column] = make_safe(row[column])
                named = ", ".join(repr(c) for c in bad)
                yield (row, origin, f"invalid {encoding_label} in column"
                                    f"{'s' if len(bad) > 1 else ''} {named}")
                continue
        yield row, origin, None


def _csv_header(values: list[str], where: str) -> list[str]:
    header = [make_safe(name) for name in values]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise ConnectorError(f"csv source {where}: column {name!r} appears twice in "
                                 f"the header; rename one")
        seen.add(name)
    return header


# ---------------------------------------------------------------- JSON Lines


def jsonl_rows(stream: IO[bytes], *, name: str, where: str, encoding: str = "utf-8") -> RowStream:
    """One JSON object per line; blank lines are skipped."""
    loads = loads_checked
    # Only "\n" ends a line: a lone "\r" inside a value must not split a record.
    handle = _text(stream, encoding, newline="\n")
    utf8 = is_utf8(encoding)
    lineno = 0
    for line in handle:
        lineno += 1
        text = line.strip(" \t\r\n")
        if not text:
            continue
        origin = f"{name}:{lineno}"
        if has_surrogates(text):
            yield ({"_raw": clip(make_safe(text))}, origin,
                   f"line {lineno}: invalid UTF-8" if utf8 else f"line {lineno}: invalid {encoding}")
            continue
        value, problem = loads(text)
        if problem is not None:
            yield ({"_raw": clip(make_safe(text))}, origin, f"line {lineno}: {problem}")
            continue
        if not isinstance(value, dict):
            yield ({"_raw": clip(text)}, origin,
                   f"line {lineno}: not a JSON object (got {json_kind(value)})")
            continue
        yield value, origin, None


# ---------------------------------------------------------------- JSON


class _Prefixed(io.RawIOBase):
    """`head`, then the rest of `stream`: what was read while looking ahead, put back."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _Utf8Reader:
    """Bytes for ijson from a text stream in another encoding (ijson parses UTF-8)."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        return self._handle.read(size).encode("utf-8", "surrogateescape")


def _from_first_significant(stream: IO[bytes]) -> tuple[bytes, IO[bytes]]:
    """(the first byte that is not a BOM or whitespace, the stream from that byte on).

    The byte is b"" for a stream with nothing in it.
    """
    chunk = stream.read(_PROBE)
    if chunk.startswith(_UTF8_BOM):
        chunk = chunk[len(_UTF8_BOM):]
    while chunk:
        stripped = chunk.lstrip(_JSON_SPACE)
        if stripped:
            return stripped[:1], io.BufferedReader(_Prefixed(stripped, stream), _PROBE)
        chunk = stream.read(_PROBE)
    return b"", stream


# yajl (ijson's fast C parser) stops at a number past 64 bits ("integer overflow") or past a
# double ("numeric (floating point) overflow"), and cannot resume: valid JSON that Python reads.
_YAJL_OVERFLOW = "overflow"
_PYTHON_BACKEND = ijson.get_backend("python")


def json_rows(stream: IO[bytes], *, name: str, where: str, encoding: str = "utf-8") -> RowStream:
    """A top-level JSON array of objects, parsed incrementally with ijson.

    The fast (yajl) parser is used first; if it stops at a number it cannot hold, the file is
    read again from the start with ijson's Python parser (which holds any int Python can) and
    the elements already read are skipped, so no record after the big number is lost. A
    stream that cannot be read again fails the source loudly instead.
    """
    parsed = 0
    try:
        for row in _json_rows(stream, ijson.basic_parse, name=name, where=where,
                              encoding=encoding, skip=0):
            parsed += 1
            yield row
        return
    except _Overflow as overflow:
        if not _rewind(stream):
            raise ConnectorError(
                f"json source {where}: element {overflow.index} holds a number too large for "
                f"the JSON parser ({overflow.detail}) and the source cannot be read again; "
                f"the records after it were not read") from None
    yield from _json_rows(stream, _PYTHON_BACKEND.basic_parse, name=name, where=where,
                          encoding=encoding, skip=parsed)


class _Overflow(Exception):
    def __init__(self, index: int, detail: str) -> None:
        super().__init__(detail)
        self.index = index
        self.detail = detail


def _rewind(stream: IO[bytes]) -> bool:
    try:
        if not stream.seekable():
            return False
        stream.seek(0)
        return True
    except (OSError, ValueError):
        return False


def _json_rows(stream: IO[bytes], basic_parse: Any, *, name: str, where: str, encoding: str,
               skip: int) -> Iterator[Row]:
    """json_rows with one ijson parser; the first `skip` elements are parsed but not yielded.
    Raises _Overflow when the fast parser stops at a number it cannot hold (and skip is 0)."""
    first, content = _from_first_significant(stream)
    if first != b"[":
        found = "an empty file" if not first else \
            ("an object" if first == b"{" else f"{first.decode('latin-1')!r}")
        raise ConnectorError(f"json source {where}: expected a top-level JSON array "
                             f"of objects, found {found}")
    if is_utf8(encoding):
        readable: Any = content
    else:
        readable = _Utf8Reader(io.TextIOWrapper(content, encoding=encoding))
    index = 0
    try:
        for value in _elements(basic_parse(readable, use_float=True)):
            if index < skip:
                index += 1
                continue
            origin = f"{name}[{index}]"
            if value is _TOO_DEEP:
                yield ({"_raw": f"(element {index}: not kept, {too_deep()})"}, origin,
                       f"element {index}: {too_deep()}")
            elif isinstance(value, dict):
                # (yajl, ijson's parser, turns a lone surrogate escape into "?": no text check)
                yield value, origin, None
            else:
                raw = json.dumps(value, ensure_ascii=False, default=str)
                yield ({"_raw": clip(raw)}, origin,
                       f"element {index} is not a JSON object (got {json_kind(value)})")
            index += 1
    except (ijson.JSONError, UnicodeDecodeError, ValueError) as exc:
        # ValueError: the Python parser's int() refusing more than 4,300 digits
        if basic_parse is not _PYTHON_BACKEND.basic_parse and _YAJL_OVERFLOW in first_line(exc):
            raise _Overflow(index, first_line(exc)) from None
        # The parser cannot resume after an error: what follows is one unreadable record.
        yield (None, f"{name}[{index}]",
               f"invalid JSON at element {index}: {first_line(exc)}; "
               f"the rest of the file cannot be read")


_TOO_DEEP = object()


def _elements(events: Iterator[tuple[str, Any]]) -> Iterator[Any]:
    """The elements of a top-level JSON array, built from ijson's basic events (after the
    opening `[`), nesting at most MAX_NESTING levels. A deeper element is read to its end
    without being built and comes out as `_TOO_DEEP`: memory stays bounded whatever the depth
    (ijson's own `items` keeps a prefix string per level, which grows with the square of it).
    """
    next(events)  # the top-level start_array, checked by the caller
    stack: list[Any] = []
    keys: list[Any] = []
    depth = 0
    deep = False
    for event, value in events:
        if event == "map_key":
            if not deep:
                keys[-1] = value
            continue
        if event == "start_map" or event == "start_array":
            depth += 1
            if deep:
                continue
            if depth > MAX_NESTING:
                deep = True
                stack.clear()
                keys.clear()
                continue
            container: Any = {} if event == "start_map" else []
            if stack:
                top = stack[-1]
                if type(top) is list:
                    top.append(container)
                else:
                    top[keys[-1]] = container
            stack.append(container)
            keys.append(None)
            continue
        if event == "end_map" or event == "end_array":
            if depth == 0:
                return  # the top-level array's end
            depth -= 1
            done = None
            if not deep:
                done = stack.pop()
                keys.pop()
            if depth == 0:
                yield _TOO_DEEP if deep else done
                deep = False
            continue
        if deep:
            continue
        if depth == 0:
            yield value
        else:
            top = stack[-1]
            if type(top) is list:
                top.append(value)
            else:
                top[keys[-1]] = value


PARSERS: dict[str, Parser] = {"csv": csv_rows, "jsonl": jsonl_rows, "json": json_rows}
