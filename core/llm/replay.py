"""Cassettes: recorded LLM exchanges, served back without a network.

A cassette is JSONL. The first line is a header, `{"loom_cassette": 1, "note": "...",
"created_at": "..."}` (a hand-written cassette says so in its note); each other line is one
exchange, `{"key": ..., "request": ..., "response": ...}`. The key is `LLMRequest.key()` with no
provider or base URL in it, so an exchange recorded from one provider replays under any other.
A hand-written line may leave out `key`: it is computed from `request`.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from core.errors import CassetteMiss, ProviderError
from core.llm.base import LLMRequest, LLMResponse, Provider

CASSETTE_VERSION = 1


def _header(note: str) -> dict[str, Any]:
    return {"loom_cassette": CASSETTE_VERSION, "note": note,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def read_cassette(path: Path) -> dict[str, dict[str, Any]]:
    """key -> recorded response (as LLMResponse.to_dict()). Raises ProviderError naming the line."""
    def bad(line: int, why: str) -> ProviderError:
        return ProviderError(f"{path}:{line}: malformed cassette: {why}", retryable=False)

    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ProviderError(f"{path}: cannot read the cassette: {exc.strerror or exc}") from None
    entries: dict[str, dict[str, Any]] = {}
    with handle:
        header_seen = False
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:  # a JSONDecodeError, or an integer past the digit limit
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else exc
                raise bad(number, f"not JSON ({why})") from None
            if not isinstance(item, dict):
                raise bad(number, "each line is a JSON object")
            if not header_seen:
                version = item.get("loom_cassette")
                if version is None:
                    raise bad(number, 'the first line must be the header {"loom_cassette": 1, ...}')
                if version != CASSETTE_VERSION:
                    raise bad(number, f"cassette version {version!r} is not supported "
                                      f"(this Loom reads version {CASSETTE_VERSION})")
                header_seen = True
                continue
            response = item.get("response")
            if not isinstance(response, dict) or not isinstance(response.get("text"), str):
                raise bad(number, "an exchange needs response.text")
            key = item.get("key")
            if key is None:
                key = _key_of(item.get("request"), number, bad)
            elif not isinstance(key, str):
                raise bad(number, "key must be a string")
            try:
                LLMResponse.from_dict(response)
            except (TypeError, ValueError) as exc:
                raise bad(number, f"response: {exc}") from None
            entries[key] = response
        if not header_seen:
            raise bad(1, "the file is empty; a cassette starts with a header line")
    return entries


def _key_of(request: Any, number: int, bad: Any) -> str:
    if not isinstance(request, dict):
        raise bad(number, "an exchange needs a key or a request")
    try:
        return LLMRequest(**request).key()
    except TypeError as exc:
        raise bad(number, f"request: {exc}") from None


class ReplayProvider(Provider):
    """Answers from a cassette; a request it has not seen is a CassetteMiss."""

    name = "replay"
    base_url = None
    cacheable = False  # already offline and free: caching would only copy the cassette

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries = read_cassette(self.path)

    def __len__(self) -> int:
        return len(self._entries)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        key = request.key()
        recorded = self._entries.get(key)
        if recorded is None:
            # Typed, with the cassette and the key: the workbench says what would answer in its
            # own words; the message is the command line's.
            raise CassetteMiss(f"no recorded answer in {self.path.name} for this request "
                               f"(key {key[:12]}); record one with --record FILE against a "
                               f"real provider", cassette=self.path, key=key)
        response = LLMResponse.from_dict(recorded)
        response.latency_s = time.perf_counter() - started
        return response


class CassetteRecorder:
    """Appends exchanges to a cassette as calls complete, one flushed line each.

    An existing cassette is extended: keys already in it are not written again. The file
    handle opens on first use and reopens after `close()`, so several clients may share one
    recorder and close it in any order.
    """

    def __init__(self, path: str | Path, note: str = "recorded by loom --record") -> None:
        self.path = Path(path)
        self.note = note
        self._lock = threading.Lock()
        self._handle: IO[str] | None = None
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._keys = set(read_cassette(self.path))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", encoding="utf-8") as handle:
                handle.write(json.dumps(_header(note), ensure_ascii=False) + "\n")
            self._keys = set()

    def __len__(self) -> int:
        return len(self._keys)

    def record(self, request: LLMRequest, response: LLMResponse) -> bool:
        """Append one exchange; False when its key is already in the cassette."""
        key = request.key()
        line = json.dumps({"key": key, "request": request.fingerprint(),
                           "response": response.to_dict()}, ensure_ascii=False,
                          separators=(",", ":"), default=str)
        with self._lock:
            if key in self._keys:
                return False
            if self._handle is None or self._handle.closed:
                self._handle = self._open_for_append()
            self._handle.write(line + "\n")
            self._handle.flush()
            self._keys.add(key)
        return True

    def _open_for_append(self) -> IO[str]:
        # A cassette edited by hand may lack its final newline: never glue two lines together.
        ends_open = False
        with self.path.open("rb") as existing:
            if existing.seek(0, 2) > 0:
                existing.seek(-1, 2)
                ends_open = existing.read(1) != b"\n"
        handle = self.path.open("a", encoding="utf-8")
        if ends_open:
            handle.write("\n")
        return handle

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def __enter__(self) -> "CassetteRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
