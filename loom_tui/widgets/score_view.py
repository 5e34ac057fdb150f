"""Scores as people read them: every evaluator's value, pass/fail, explanation, and its
details (an LLM judge's criteria met and not met, claims checked, …) whatever their shape.

Used by the workbench's output pane and the quarantine's detail pane; both hand in scores as
dictionaries (Score.to_dict(), or as the store keeps them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

_TRUTHY_KEYS = ("met", "passed", "supported", "ok", "pass", "correct", "grounded", "verdict")
_VERDICTS = {"supported": True, "unsupported": False}


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
        cell: list[RenderableType] = [head]
        if score.get("error"):
            cell.append(Text(f"could not score: {score['error']}", style=bad))
        elif score.get("explanation"):
            cell.append(Text(str(score["explanation"])))
        if score.get("details"):
            cell.append(details_view(score["details"], colors))
        grid.add_row(Text("✓" if passed else "✗", style=ok if passed else bad), Group(*cell))
    return grid


# Lists an LLM judge gives of what held and what did not (core.evaluate.judges), drawn as one
# label and ✓ / ✗ lines: (held, did not hold, label).
_PAIRS = (("criteria_met", "criteria_not_met", "criteria"), ("addressed", "missed", "query"),
          ("followed", "violated", "instructions"), ("grounded", "ungrounded", "statements"),
          ("supported", "unsupported", "claims"))
# Itemised findings (each with its reason) that make a pair above redundant.
_ITEMS = {"claims": ("supported", "unsupported"), "statements": ("grounded", "ungrounded")}
_LAST = ("judge",)  # who judged: after what it found
_CLIP = 240  # long texts (the other prompt's output, a judge's unusable reply) are cut here


@dataclass(frozen=True)
class _Item:
    """One finding under a label: ✓ (held), ✗ (did not) or • (neither said)."""

    held: bool | None
    text: str
    depth: int


def details_view(details: Any, colors: Mapping[str, str]) -> RenderableType:
    """`details` as lines, findings under their label with a hanging indent (a long claim
    wraps under itself, not under its mark)."""
    parts: list[RenderableType] = []
    items: list[_Item] = []

    def flush() -> None:
        if items:
            grid = Table.grid(padding=(0, 1))
            grid.add_column(no_wrap=True)
            grid.add_column(ratio=1)
            for item in items:
                grid.add_row(Text("  " * item.depth) + _mark(item.held, colors), item.text)
            parts.append(grid)
            items.clear()

    for block in _blocks(details, colors, 0):
        if isinstance(block, _Item):
            items.append(block)
        else:
            flush()
            parts.append(block)
    flush()
    return Group(*parts)


def details_text(details: Any, colors: Mapping[str, str]) -> Text:
    """`details` as one Text (no hanging indents): for plain renderings and tests."""
    lines = []
    for block in _blocks(details, colors, 0):
        if isinstance(block, _Item):
            lines.append(Text("  " * block.depth) + _mark(block.held, colors) + " " + block.text)
        else:
            lines.append(block)
    return Text("\n").join(lines)


def _mark(held: bool | None, colors: Mapping[str, str]) -> Text:
    if held is None:
        return Text("•")
    return Text("✓" if held else "✗", style=colors.get("success" if held else "error", ""))


def _blocks(details: Any, colors: Mapping[str, str], depth: int) -> list[Text | _Item]:
    indent = "  " * depth
    if isinstance(details, (list, tuple)):
        return [_finding(item, depth) for item in details]
    if not isinstance(details, Mapping):
        return [Text(f"{indent}{_clip(_scalar(details))}")]
    blocks: list[Text | _Item] = []
    done: set[str] = set(_LAST)
    for key, pair in _ITEMS.items():
        if isinstance(details.get(key), list) and details[key]:
            done.update(pair)
    for held, missed, label in _PAIRS:
        if held in done or (held not in details and missed not in details):
            continue
        good, bad = _strings(details.get(held)), _strings(details.get(missed))
        if good is None or bad is None:  # not lists of texts: shown as they are below
            continue
        done.update((held, missed))
        if not good and not bad:
            blocks.append(Text.assemble((f"{indent}{label}: ", "dim"), ("none given", "dim")))
            continue
        blocks.append(Text(f"{indent}{label}:", style="dim"))
        blocks += [_Item(True, g, depth + 1) for g in good]
        blocks += [_Item(False, b, depth + 1) for b in bad]
    for key, value in details.items():
        if key in done:
            continue
        label = Text(f"{indent}{_label(key)}: ", style="dim")
        if value in (None, "", [], {}, ()):
            blocks.append(label.append("none", "dim"))
        elif isinstance(value, (Mapping, list, tuple)) and not _flat(value):
            blocks.append(label.rstrip() or label)
            blocks += _blocks(value, colors, depth + 1)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, str) and len(v) > 30
                                                      for v in value):
            # Sentences (key differences, …): one a line, not run together with commas.
            blocks.append(Text(f"{indent}{_label(key)}:", style="dim"))
            blocks += [_Item(None, _clip(_scalar(v)), depth + 1) for v in value]
        else:
            blocks.append(label.append(_clip(_scalar(value))))
    for key in _LAST:
        if isinstance(details, Mapping) and key in details:
            blocks.append(Text(f"{indent}{_label(key)}: {_scalar(details[key])}", style="dim"))
    return blocks


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    return None


def _label(key: str) -> str:
    return str(key).replace("_", " ")


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else text[: _CLIP - 1] + "…"


def _finding(item: Any, depth: int) -> _Item:
    if not isinstance(item, Mapping):
        return _Item(None, _clip(_scalar(item)), depth)
    held = next((item[key] for key in _TRUTHY_KEYS if isinstance(item.get(key), bool)), None)
    if held is None and item.get("verdict") in _VERDICTS:  # a factuality claim
        held = _VERDICTS[item["verdict"]]
    words = [str(value) for key, value in item.items()
             if key not in _TRUTHY_KEYS and key != "source" and isinstance(value, (str, int, float))
             and not isinstance(value, bool)]
    text = " — ".join(words) if words else _scalar(item)
    if isinstance(item.get("source"), int) and not isinstance(item.get("source"), bool):
        text += f" (source {item['source']})"  # a groundedness statement's document
    return _Item(held, _clip(text), depth)


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
