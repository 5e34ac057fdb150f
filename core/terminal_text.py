"""Text from data made safe to print on a terminal.

A record id, a reason, a path or a model's answer may hold bytes a terminal obeys: a newline
that forges an `error:` line, ESC sequences that clear the screen or set the title (OSC), C1
controls (U+0080-U+009F, which some terminals read as ESC [), DEL, and the bidi controls that
make text display in an order other than it reads. Rich's `Text` passes all of these through,
so every printer neutralises them here: each becomes a visible escape (`\\n`, `\\x1b`,
`\\u202e`), so the reader still sees that it was there.
"""

from __future__ import annotations

import re

# C0 (tab and newline are separated out below), DEL, C1, and the Unicode bidi controls:
# ALM, LRM/RLM, LRE..RLO (embeddings and overrides), LRI..PDI (isolates).
_ALWAYS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[{_ALWAYS}\t\n]")
_UNSAFE_KEEP_TAB = re.compile(f"[{_ALWAYS}\n]")
_UNSAFE_KEEP_LAYOUT = re.compile(f"[{_ALWAYS}]")  # keeps \t and \n: for rendered output
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, keep_tab: bool = False) -> str:
    """`text` as one line with nothing a terminal would obey; a tab may stay where a table
    column allows it."""
    return (_UNSAFE_KEEP_TAB if keep_tab else _UNSAFE).sub(_escape, text)


def printable_layout(text: str) -> str:
    """`text` with escapes, C1, DEL and bidi controls neutralised but its tabs and newlines
    kept: for output already laid out into lines (Rich's rendered segments)."""
    return _UNSAFE_KEEP_LAYOUT.sub(_escape, text)
