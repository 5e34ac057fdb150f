"""Helpers for tests of LLM judges against the loopback server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from core.config import LoomConfig
from core.credentials import SecretResolver
from core.processing import Runtime
from core.spec import LoadedSpec, load_spec
from tests.pipelines import reply, write_pipeline

JUDGE_SYSTEM_START = "You are a careful, impartial evaluator"


def is_judge_request(body: dict[str, Any]) -> bool:
    """Judge requests open with the packaged system prompt (a system field for Anthropic, a
    string or, as the LiteLLM proxy sends it, a list of text blocks)."""
    system = body.get("system")
    if system is not None and _plain(system).startswith(JUDGE_SYSTEM_START):
        return True
    messages = body.get("messages") or []
    return bool(messages) and messages[0].get("role") == "system" and \
        _plain(messages[0].get("content", "")).startswith(JUDGE_SYSTEM_START)


def _plain(content: Any) -> str:
    """A message's text: a string, or the text of its content blocks."""
    if isinstance(content, list):
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return str(content)


def judge_prompt(body: dict[str, Any]) -> str:
    """The judge's first user message: what it was asked."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def judge_requests(server: Any) -> list[dict[str, Any]]:
    return [body for body in server.requests if is_judge_request(body)]


def judge_responder(answer: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], str]:
    """A loopback responder: judge requests get `answer(body)` (a dict is sent as JSON);
    anything else gets the default answer."""

    def respond(body: dict[str, Any]) -> str:
        if not is_judge_request(body):
            return '{"ok": true}'
        value = answer(body)
        return value if isinstance(value, str) else json.dumps(value)

    return respond


def judge_pipeline(folder: Path, server: Any, evaluators: list[dict[str, Any]], *,
                   rows: list[dict[str, Any]] | None = None, **sections: Any) -> LoadedSpec:
    rows = rows or [{"id": "r1", "text": "The kettle boils fast.", "expected": "positive",
                     "reply": reply("positive")}]
    evaluate = {"evaluators": evaluators, **sections.pop("evaluate", {})}
    path = write_pipeline(folder, rows=rows, base_url=server.base_url, evaluate=evaluate,
                          **sections)
    return load_spec(path)


@contextlib.asynccontextmanager
async def built(loaded: LoadedSpec, *, cache: Any = None,
                warnings: list[str] | None = None) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(loaded, config=LoomConfig(), cache=cache, use_cache=True,
                            resolver=SecretResolver(use_keyring=False),
                            on_warning=(warnings if warnings is not None else []).append)
    try:
        yield runtime
    finally:
        await runtime.aclose()
