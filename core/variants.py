"""Prompt variants: alternative prompt texts kept beside a pipeline's prompt, to try in the
workbench without writing them over the prompt file.

A variant is a file in a `variants/` folder next to the prompt file (for `prompts/classify.j2`,
`prompts/variants/*.j2`). Its name is the file's stem; an optional first line
`{#- variant: one line saying what it changes -#}` describes it (a Jinja comment with its
whitespace trimmed, so it renders to nothing and changes no request).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

VARIANTS_DIR = "variants"
# Past this a folder holds something else than a handful of hand-written variants.
MAX_VARIANTS = 50
MAX_BYTES = 256 * 1024
_DESCRIPTION = re.compile(r"\A\s*\{#-?\s*variant:\s*(?P<text>.*?)\s*-?#\}", re.S)


@dataclass(frozen=True)
class PromptVariant:
    """One alternative prompt text for a pipeline."""

    name: str  # the file's stem: strict_neutral
    title: str  # as people read it: Strict neutral
    description: str  # the leading `{#- variant: … -#}` comment, or ""
    path: Path
    text: str  # the prompt: the file without its description line


def prompt_variants(prompt_path: Path) -> list[PromptVariant]:
    """The variants beside `prompt_path`, by name; unreadable or oversized files are left out
    (a variant is an offer, never a reason the workbench fails to open)."""
    folder = Path(prompt_path).parent / VARIANTS_DIR
    if not folder.is_dir():
        return []
    found: list[PromptVariant] = []
    for path in sorted(folder.glob(f"*{Path(prompt_path).suffix or '.j2'}"))[:MAX_VARIANTS]:
        try:
            if not path.is_file() or path.stat().st_size > MAX_BYTES:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        match = _DESCRIPTION.match(text)
        description = " ".join(match.group("text").split()) if match else ""
        # The description is about the file, not part of the prompt: a variant saved as the
        # prompt must not carry it (it renders to nothing either way).
        body = text[match.end():].lstrip("\r\n") if match else text
        found.append(PromptVariant(path.stem, path.stem.replace("_", " ").replace("-", " ")
                                   .capitalize(), description, path, body))
    return found
