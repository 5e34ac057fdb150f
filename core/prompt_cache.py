"""The static prefix of a pipeline's prompt: what a provider's prompt cache can keep.

The system prompt and the prompt up to its first record field (the instructions and the
context, typically) are the same for every record of a run. Rendering the templates with a
record that stops the render at its first use gives exactly that text, whatever the template
does before it (params, context, loops over either). Providers that cache on request
(Anthropic's `cache_control`) mark it; the others cache prefixes on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jinja2

from core.errors import LoomError
from core.llm.base import CachePrefix
from core.prompts import PromptSet, budgeted_render

# Below this a provider does not cache a prefix (Anthropic's minimum is 1,024 tokens for most
# models, ~4 characters each): marking a shorter one would only change the request's shape.
MIN_CACHEABLE_CHARS = 4096
PROBE_TIMEOUT_S = 0.5


class _RecordReached(Exception):
    pass


class _Probe:
    """A record whose every use ends the render."""

    def _stop(self, *_: Any, **__: Any) -> Any:
        raise _RecordReached

    __getattr__ = __getitem__ = __iter__ = __str__ = __len__ = __bool__ = __contains__ = _stop
    __eq__ = __lt__ = __gt__ = __le__ = __ge__ = _stop
    __hash__ = None  # type: ignore[assignment]  # unhashable, Python's way: typeshed wants a method


def static_prefix(prompts: PromptSet) -> tuple[int, str] | None:
    """(message index, text) of the longest prefix no record changes, or None."""
    variables = {"input": _Probe(), "params": prompts.params,
                 "context": {name: doc.text for name, doc in prompts.contexts.items()}}
    parts: list[tuple[str, str]] = []
    if prompts.system_text is not None:
        parts.append(("system", prompts.system_text))
    parts.append(("prompt", prompts.prompt_text))
    for index, (which, text) in enumerate(parts):
        try:
            template = prompts._template(which, text)  # noqa: SLF001 - the run's compiled template
        except (jinja2.TemplateError, LoomError):
            return None  # the records' renders say what is wrong with it, one by one
        rendered: list[str] = []
        try:
            # Within a short render budget: a template that takes longer to reach its first
            # record field gets no cache mark (its records' renders have the full budget).
            budgeted_render(template, variables, prefix=rendered, timeout_s=PROBE_TIMEOUT_S)
        except _RecordReached:
            return index, "".join(rendered)
        except Exception:  # noqa: BLE001 - a template that fails here fails on records too
            return None
    return None  # no record field at all: nothing varies, nothing worth marking


def prefix_marker(prompts: PromptSet) -> Callable[[list[dict[str, str]]], CachePrefix | None]:
    """For the transform: where the static prefix ends in a record's rendered messages."""
    found = static_prefix(prompts)

    def marker(messages: list[dict[str, str]]) -> CachePrefix | None:
        if found is None:
            return None
        index, text = found
        if index >= len(messages) or not messages[index]["content"].startswith(text):
            return None  # a repair turn or another template: nothing known
        static_chars = len(text) + sum(len(m["content"]) for m in messages[:index])
        if static_chars < MIN_CACHEABLE_CHARS:
            return None
        return CachePrefix(message=index, chars=len(text))

    return marker
