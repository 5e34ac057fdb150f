"""What a model accepts, as data: sampling parameters, reasoning, schema output, forced tools.

The facts come from `model_capabilities.json` beside this module, written by
`tools/refresh_model_capabilities.py` from LiteLLM's model data. A model the file does not know
gets `UNKNOWN`, and the providers send it a shape that current models accept; when a server
still refuses a parameter, `core.llm.adaptation` learns that for the model.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelCapabilities:
    """None: not known."""

    sampling: bool | None = None  # takes temperature / top_p / top_k
    reasoning: bool | None = None  # a reasoning model (OpenAI: max_completion_tokens only)
    native_schema: bool | None = None  # schema-constrained output (OpenAI strict, Anthropic output_config)
    forced_tool: bool | None = None  # takes tool_choice that forces a tool
    prompt_caching: bool | None = None


UNKNOWN = ModelCapabilities()

# A dated snapshot or a moving alias is the same model: gpt-4o-mini-2024-07-18,
# claude-sonnet-4-5-20250929, claude-opus-4-7@20260416, gpt-5-latest.
_SNAPSHOT = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest)$")


@functools.cache
def _table() -> dict[str, dict[str, ModelCapabilities]]:
    text = resources.files("core.llm").joinpath("model_capabilities.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return {vendor: {name: ModelCapabilities(**facts) for name, facts in models.items()}
            for vendor, models in data["models"].items()}


def data_written() -> str:
    """The date the capability data was written (for `loom --version` and the docs)."""
    text = resources.files("core.llm").joinpath("model_capabilities.json").read_text("utf-8")
    return str(json.loads(text).get("written", "unknown"))


def lookup(model: str, vendors: tuple[str, ...]) -> ModelCapabilities:
    """The model's facts from the first vendor (openai, anthropic) that knows it."""
    table = _table()
    name = model.lower().strip()
    # A gateway's routing prefix (openai/gpt-5, anthropic/claude-…) names the same model.
    candidates = [name]
    if "/" in name:
        candidates.append(name.rsplit("/", 1)[-1])
    for candidate in list(candidates):
        bare = _SNAPSHOT.sub("", candidate)
        if bare != candidate:
            candidates.append(bare)
    for vendor in vendors:
        models = table.get(vendor, {})
        for candidate in candidates:
            found = models.get(candidate)
            if found is not None:
                return found
    return UNKNOWN


# Models the data lists that do not answer a chat prompt with text (LiteLLM's data is every
# endpoint's): not worth offering for a transform.
_NOT_CHAT = re.compile(r"audio|search|computer-use|container|realtime|tts|transcribe|embedding|"
                       r"image", re.I)


def known_models(vendor: str) -> list[str]:
    """The models the data knows for a vendor (openai, anthropic), as people pick them: no
    fine-tune ids (`ft:…`), no audio or search models, and no dated snapshots of a model
    already listed."""
    models = _table().get(vendor, {})
    names = [name for name in models if not name.startswith("ft:") and not _NOT_CHAT.search(name)]
    return sorted(name for name in names
                  if _SNAPSHOT.sub("", name) == name or _SNAPSHOT.sub("", name) not in models)
