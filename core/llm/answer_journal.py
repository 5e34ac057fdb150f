"""The answers a run has paid for, kept from the moment each arrives until the run ends.

A record's result reaches the history store in the engine's next checkpoint, ~100 ms after its
answer (core.engine). A process killed in between loses answers it was billed for, and
`--resume` paid for them again (800 records at concurrency 8, killed: 817 requests). So each
call is journaled as it happens, in a file of the run's own: a line when it is sent (its first
bytes going out on an open connection: core.llm.base.request_sent) and a line with the answer
when it arrives, before the record goes on to be parsed, evaluated and checkpointed. Answers
are kept per record (`record_scope`). A resumed run takes its earlier attempts' answers from
the journal instead of asking again, and counts the calls that were sent but never answered
(in flight at the crash: made, maybe billed, and made again).

Each line is one `write(2)` on a file opened for appending — a few microseconds on the event
loop, no thread hop, no transaction. The journal survives the process (the kernel has the
bytes once write returns), not a power cut: the same promise as the checkpoints' SQLite WAL
with synchronous=NORMAL. A line cut short by the kill is ignored.

The file is the run's, not a cache: it is read only by a resume of the same run, whatever
`transform.cache` says, and deleted when the run ends (everything answered is in the store by
then). It lives in `$LOOM_HOME/journal/RUN_ID.jsonl`: a resume on another machine (a shared
PostgreSQL history) does not have it and pays for those answers again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.llm.base import LLMResponse
from core.records import LLMCall

_log = logging.getLogger(__name__)

_CALL_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(LLMCall))
_CALL_FIELDS = frozenset(_CALL_FIELD_NAMES)


@dataclass(frozen=True, slots=True)
class JournaledAnswer:
    """An answer an earlier attempt of the run was given (and billed for)."""

    response: LLMResponse
    call: LLMCall


@dataclass(frozen=True, slots=True)
class EarlierAttempts:
    """What the journal says the run's earlier attempts did that the store does not hold."""

    answers: int  # answered, not checkpointed: served from the journal, not paid again
    unanswered: int  # sent, never answered (in flight at the crash): paid again when redone
    unanswered_reserved_usd: float  # what the budget reserved for those, their cost unknown


# The record whose calls are being made (set by core.processing for each record). Answers are
# the record's own: records with one prompt each get their own answer (`cache: false` asks the
# model for each), and a record done before the crash leaves its answers to nobody.
record_scope: ContextVar[str] = ContextVar("loom_journal_record", default="")


def _scoped(key: str) -> str:
    return f"{record_scope.get()}|{key}"


def journal_path(home: Path, run_id: str) -> Path:
    return home / "journal" / f"{run_id}.jsonl"


class AnswerJournal:
    """One run's journal. `open` reads what earlier attempts wrote and appends after it."""

    def __init__(self, path: Path, answers: dict[str, deque[JournaledAnswer]],
                 earlier: EarlierAttempts,
                 shared: dict[str, JournaledAnswer] | None = None) -> None:
        self.path = path
        self._answers = answers
        self._shared = shared or {}
        self.earlier = earlier
        self._fd: int | None = None
        # Ids unique across attempts: this process's token and a counter.
        self._token = secrets.token_hex(4)
        self._count = 0
        self._open: set[str] = set()  # sent by this process, not answered or ended yet
        self.failed: str | None = None  # why the journal stopped being written, once it has

    @classmethod
    def open(cls, path: Path) -> "AnswerJournal":
        answers: dict[str, deque[JournaledAnswer]] = {}
        shared: dict[str, JournaledAnswer] = {}  # by request alone, whichever record it was
        sent: dict[str, float] = {}
        answered = 0
        try:
            with path.open("rb") as handle:
                for raw in handle:
                    entry = _parse(raw)
                    if entry is None:
                        continue
                    if "sent" in entry:
                        sent[str(entry["sent"])] = float(entry.get("reserved") or 0.0)
                    elif "answered" in entry or "ended" in entry:
                        call_id = str(entry.get("answered") or entry.get("ended"))
                        sent.pop(call_id, None)
                        answer = _answer(entry) if "answered" in entry else None
                        if answer is not None:
                            answers.setdefault(str(entry["key"]), deque()).append(answer)
                            shared[str(entry["key"]).rpartition("|")[2]] = answer
                            answered += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Unreadable: the resume pays those answers again, as it did before journals.
            _log.warning("answer journal %s not read: %s", path, exc)
        earlier = EarlierAttempts(answers=answered, unanswered=len(sent),
                                  unanswered_reserved_usd=sum(sent.values()))
        return cls(path, answers, earlier, shared)

    # -- a resumed run's reads -------------------------------------------------------------

    def take(self, key: str) -> JournaledAnswer | None:
        """An earlier attempt's answer to this request for the record being processed, once
        per answer it was given."""
        key = _scoped(key)
        waiting = self._answers.get(key)
        if not waiting:
            return None
        answer = waiting.popleft()
        if not waiting:
            del self._answers[key]
        return answer

    def shared(self, key: str) -> JournaledAnswer | None:
        """An answer an earlier attempt was given to this request for any record: what the
        response cache would have answered (`cache: true`) had its write not died with the
        process. Not taken: every record with the request may read it."""
        return self._shared.get(key)

    # -- this attempt's writes ---------------------------------------------------------------

    def sent(self, key: str, reserved: float) -> str:
        """A call is going out; returns its id for `answered` or `ended`."""
        call_id = self._next_id()
        self._write({"sent": call_id, "key": _scoped(key), "reserved": reserved})
        self._open.add(call_id)
        return call_id

    def answered(self, call_id: str | None, key: str, response: LLMResponse,
                 call: LLMCall) -> None:
        """The call was answered. `call_id` None: a provider that never said it sent (not
        HTTP), whose answer is kept all the same."""
        if call_id is not None:
            self._open.discard(call_id)
        self._write({"answered": call_id or self._next_id(), "key": _scoped(key),
                     "response": response.to_dict(),
                     # Its fields are plain values: no deep copy (dataclasses.asdict is 60 µs).
                     "call": {name: getattr(call, name) for name in _CALL_FIELD_NAMES}})

    def _next_id(self) -> str:
        self._count += 1
        return f"{self._token}.{self._count}"

    def ended(self, call_id: str) -> None:
        """The call ended without an answer it was billed for (it failed, or was refused)."""
        self._open.discard(call_id)
        self._write({"ended": call_id})

    @property
    def abandoned(self) -> int:
        """Calls this process sent and never heard the end of: cancelled in flight (a run
        stopping at once, by its breaker or a cancel). Made, maybe billed, answers not kept."""
        return len(self._open)

    def _write(self, entry: dict[str, Any]) -> None:
        if self.failed is not None:
            return
        try:
            # ASCII escapes: an answer holding a lone surrogate (hostile bytes) is kept as the
            # escape, read back as it was, where UTF-8 could not encode it at all.
            line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(self._fd, line.encode("ascii"))
        except (OSError, ValueError, TypeError) as exc:
            # The run goes on without it: a crash then costs what it cost before the journal.
            # The engine says so in the run's warnings (a full disk says more on its own).
            self.failed = f"{type(exc).__name__}: {exc}"
            _log.debug("answer journal %s not written: %s", self.path, self.failed)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def forget(self) -> None:
        """What earlier attempts wrote is settled: none of it is read, and the file starts
        again with this attempt's lines."""
        self.discard()
        self._shared.clear()
        self.earlier = EarlierAttempts(answers=0, unanswered=0, unanswered_reserved_usd=0.0)

    def discard(self) -> None:
        """The run ended: the store holds everything the journal did."""
        self.close()
        self._answers.clear()
        self._shared.clear()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log.warning("answer journal %s not removed: %s", self.path, exc)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None  # the last line, cut short by the kill
    return entry if isinstance(entry, dict) else None


def _answer(entry: dict[str, Any]) -> JournaledAnswer | None:
    try:
        response = LLMResponse.from_dict(entry["response"])
        call = LLMCall(**{k: v for k, v in entry["call"].items() if k in _CALL_FIELDS})
    except (KeyError, TypeError, ValueError):
        return None
    return JournaledAnswer(response, call)
