"""How values read on screen: money, durations, times, counts, JSON and one-line errors.

Pure functions, so that every screen says "$0.0021" and "120 ms" the same way.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from core.api import LoomError
from core.api import money as money  # one way to write a cost, the command line's too

# Theme variables that colour a run or record status.
STATUS_COLOR = {
    "success": "success", "partial": "warning", "failed": "error", "cancelled": "secondary",
    "running": "accent", "open": "warning", "approved": "success", "reprocessed": "success",
    "discarded": "secondary",
}


def latency(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def duration(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def rejection(loaded: int | None, quarantined: int | None) -> float | None:
    """Quarantined share of the records that reached the gate (skipped ones did not)."""
    processed = (loaded or 0) + (quarantined or 0)
    return (quarantined or 0) / processed if processed else None


def when(value: datetime | None) -> str:
    """A timestamp in the viewer's local time, to the minute."""
    if value is None:
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone().strftime("%Y-%m-%d %H:%M")


def short_hash(value: str | None) -> str:
    return value[:10] if value else "–"


def compact_json(value: Any, limit: int | None = None) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if limit is not None and len(text) > limit:
        return text[: max(0, limit - 1)] + "…"
    return text


def pretty_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def one_line(text: object, limit: int = 300) -> str:
    """Any message as one line: newlines folded, long ones cut."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_line(error: BaseException) -> str:
    """A failure as people should read it: Loom's own errors are already one line; anything
    else says its type too."""
    if isinstance(error, LoomError):
        return one_line(error)
    return one_line(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def record_summary(data: dict[str, Any], skip: object = None, limit: int = 80) -> str:
    """A record's fields on one line, texts first (they say what the record is), then short
    values as key=value; `skip` leaves out a value (the id, shown in its own column)."""
    texts, short = [], []
    for key, value in data.items():
        if value == skip:
            continue
        if isinstance(value, str) and len(value) >= 24:
            texts.append(value)
        else:
            short.append(f"{key}={value}")
    return one_line(" · ".join([*texts, *short]), limit)
