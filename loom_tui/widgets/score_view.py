"""Scores as people read them: every evaluator's value, pass/fail, explanation, and its
details (an LLM judge's criteria met and not met, claims checked, …) whatever their shape.

Used by the workbench's output pane and the quarantine's detail pane; both hand in scores as
dictionaries (Score.to_dict(), or as the store keeps them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

_TRUTHY_KEYS = ("met", "passed", "supported", "ok", "pass", "correct", "grounded", "verdict")


def scores_table(scores: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> Table:
    """One block per evaluator: mark, name, value against threshold; below it the explanation
    and any details, indented (reads well in a narrow pane)."""
    ok, bad = colors.get("success", "green"), colors.get("error", "red")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)  # mark
    grid.add_column(ratio=1)  # name and value, then explanation and details
    for score in scores:
        passed = bool(score.get("passed"))
        value = score.get("value")
        threshold = score.get("threshold")
        head = Text(str(score.get("evaluator", "?")), style="bold")
        if isinstance(value, (int, float)):
            head.append(f"  {value:.2f}")
            if isinstance(threshold, (int, float)):
                head.append(f" {'≥' if passed else '<'} {threshold:.2f}", "dim")
        extra = []
        if score.get("type"):
            extra.append(str(score["type"]))
        if score.get("confidence") is not None:
            extra.append(f"confidence {score['confidence']:.2f}")
        if score.get("weight") not in (None, 1, 1.0):
            extra.append(f"weight {score['weight']:g}")
        if score.get("cost_usd") is not None:
            extra.append(f"${score['cost_usd']:.6f}")
        if extra:
            head.append(f"  {' · '.join(extra)}", "dim")
        body = Text()
        if score.get("error"):
            body.append(f"could not score: {score['error']}", bad)
        elif score.get("explanation"):
            body.append(str(score["explanation"]))
        details = score.get("details")
        if details:
            if body:
                body.append("\n")
            body.append_text(details_text(details, colors))
        cell = head if not body else Text.assemble(head, "\n", body)
        grid.add_row(Text("✓" if passed else "✗", style=ok if passed else bad), cell)
    return grid


def details_text(details: Any, colors: Mapping[str, str], indent: str = "") -> Text:
    """Any JSON-shaped details as indented lines: lists of findings get ✓/✗ marks when an
    item says whether it held (met, passed, supported, …)."""
    out = Text()
    if isinstance(details, Mapping):
        for n, (key, value) in enumerate(details.items()):
            if n:
                out.append("\n")
            out.append(f"{indent}{key}: ", "dim")
            if value in (None, "", [], {}, ()):
                out.append("none", "dim")
            elif isinstance(value, (Mapping, list, tuple)) and not _flat(value):
                out.append("\n")
                out.append_text(details_text(value, colors, indent + "  "))
            else:
                out.append(_scalar(value))
    elif isinstance(details, (list, tuple)):
        for n, item in enumerate(details):
            if n:
                out.append("\n")
            out.append(indent)
            out.append_text(_finding(item, colors))
    else:
        out.append(f"{indent}{_scalar(details)}")
    return out


def _finding(item: Any, colors: Mapping[str, str]) -> Text:
    if not isinstance(item, Mapping):
        return Text(f"• {_scalar(item)}")
    held = next((item[key] for key in _TRUTHY_KEYS if isinstance(item.get(key), bool)), None)
    words = [str(value) for key, value in item.items()
             if key not in _TRUTHY_KEYS and isinstance(value, (str, int, float))
             and not isinstance(value, bool)]
    text = Text()
    if held is None:
        text.append("• ")
    else:
        text.append("✓ " if held else "✗ ",
                    colors.get("success", "green") if held else colors.get("error", "red"))
    text.append(" — ".join(words) if words else _scalar(item))
    return text


def _flat(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(not isinstance(v, (Mapping, list, tuple)) for v in value.values())
    return all(not isinstance(v, (Mapping, list, tuple)) for v in value)


def _scalar(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_scalar(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_scalar(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
