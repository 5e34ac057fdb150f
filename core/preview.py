"""The model a workbench session previews with, when it is not the pipeline's own.

A `PreviewModel` becomes `--set` overrides (`transform.provider=…`, `transform.model=…`) applied
when the pipeline is loaded for the sample: nothing is written to the pipeline file. `KeyStatus`
says whether the key such a provider reads is there (keyring, then environment), before any
call is made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

# What the switcher offers, in this order (replay only when the pipeline has a cassette).
PROVIDERS = ("replay", "openai", "anthropic", "openai_compatible")
# The variable each provider reads when a pipeline sets no transform.api_key.
IMPLICIT_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# A local OpenAI-compatible server's usual address (llama.cpp's server, LiteLLM's is :4000,
# Ollama's http://127.0.0.1:11434/v1).
LOCAL_BASE_URL = "http://127.0.0.1:8080/v1"


@dataclass(frozen=True)
class PreviewModel:
    provider: str
    model: str
    base_url: str | None = None

    @property
    def label(self) -> str:
        return f"{self.provider} · {self.model}"

    def overrides(self, transform: Any) -> list[str]:
        """The `--set` items that make `transform` (a TransformSpec) call this model. Another
        provider than the pipeline's gets its own key by placeholder (so a key stored in the
        keyring with F6 answers) and none of the pipeline's base URL or cassette: a key or an
        address meant for one server must never reach another."""
        items = [f"transform.provider={self.provider}",
                 f"transform.model={json.dumps(self.model)}"]
        same = self.provider == transform.provider
        if self.provider == "openai_compatible":
            items.append(f"transform.base_url={json.dumps(self.base_url or LOCAL_BASE_URL)}")
        elif not same:
            items.append("transform.base_url=null")
        if not same:
            implicit = IMPLICIT_KEYS.get(self.provider)
            items.append(f"transform.api_key=${{{implicit}}}" if implicit
                         else "transform.api_key=null")
            if self.provider != "replay":
                items.append("transform.cassette=null")
        return items


@dataclass(frozen=True)
class KeyStatus:
    """Whether a provider's key can be found, by name (never its value)."""

    name: str | None  # the secret it reads; None when it needs none
    found_in: str | None  # "keyring" | "environment" | None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.name is None or self.found_in is not None


def key_status(provider: str, transform: Any, keyring_names: set[str] | None) -> KeyStatus:
    """`keyring_names`: the names stored in the keyring (None: no usable keyring)."""
    from core.credentials import placeholder_names

    if provider == "replay":
        return KeyStatus(None, None, "answers from the pipeline's cassette: no key, no network")
    name: str | None = None
    if provider == transform.provider and transform.api_key:
        names = sorted(placeholder_names(transform.api_key))
        if not names:
            return KeyStatus("transform.api_key", "pipeline", "the pipeline sets it")
        name = names[0]
    else:
        name = IMPLICIT_KEYS.get(provider)
    if name is None:
        return KeyStatus(None, None, "a local server needs no key (a hosted one reads "
                         "transform.api_key)")
    if keyring_names is not None and name in keyring_names:
        return KeyStatus(name, "keyring")
    if os.environ.get(name):
        return KeyStatus(name, "environment")
    return KeyStatus(name, None)
