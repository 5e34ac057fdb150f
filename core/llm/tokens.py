"""How many tokens a prompt will cost, before the call: what the budget reserves and the token
bucket takes.

chars/4 holds for English prose and nothing else: a provider counts Japanese, emoji or code at
several times that, and a budget admitted on chars/4 was spent several times over. So:

- OpenAI models: their real tokenizer (tiktoken), when its encoding file is on this machine.
  tiktoken downloads encodings on first use; Loom never lets it (a run must not reach the
  network for an estimate, and CI has none), so the encoding is used only when it is already in
  tiktoken's cache (`TIKTOKEN_CACHE_DIR`, else the temp dir's `data-gym-cache`) and its hash is
  the one tiktoken expects. Otherwise, the conservative count below.
- Other models (Anthropic's tokenizer is not published): a conservative count, four ASCII
  letters, digits or spaces a token, ASCII punctuation a token each, every other character a
  token and a quarter, and a character outside the Basic Multilingual Plane (most emoji) two.

Either way the budget then corrects the count by what answered calls reported
(core.llm.budget.Calibration), so a tokenizer that still undercounts is learned from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_log = logging.getLogger(__name__)

# Tokens a chat message costs beyond its content (role and framing), as OpenAI documents.
PER_MESSAGE = 4
# Where tiktoken's own code fetches each encoding from: only used to find the file in its cache
# (the cache file is named by the SHA-1 of this address), never fetched. The hashes are the
# ones tiktoken checks.
ENCODING_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}
# The providers whose model names tiktoken knows (an openai_compatible server that calls its
# model gpt-4o-mini is OpenAI's tokenizer at worst slightly off; the calibration corrects it).
TIKTOKEN_PROVIDERS = frozenset({"openai", "openai_compatible"})


_UNKNOWN = object()


class Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


# ASCII letters, digits and whitespace, dropped by str.translate (C speed: this runs per call).
_WORDISH = {code: None for code in range(128) if chr(code).isalnum() or chr(code).isspace()}


def conservative_count(text: str) -> int:
    """Tokens `text` costs at most with the common tokenizers: ASCII letters, digits and
    spaces at four characters a token, ASCII punctuation (code, JSON) a token each, any other
    character a token and a quarter (accented letters break the words around them into pieces;
    Devanagari's marks are tokens of their own), and outside the BMP (most emoji) two."""
    rest = text.translate(_WORDISH)
    words = len(text) - len(rest)
    if rest.isascii():
        return (words + 3) // 4 + len(rest)
    punctuation = other = astral = 0
    for char in rest:
        code = ord(char)
        if code < 128:
            punctuation += 1
        elif code < 0x10000:
            other += 1
        else:
            astral += 1
    return (words + 3) // 4 + punctuation + (5 * other + 3) // 4 + 2 * astral


def tiktoken_cache_dir() -> Path | None:
    """tiktoken's cache folder as tiktoken itself decides it (None: caching disabled)."""
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            value = os.environ[name]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cached_encoding_file(encoding: str) -> Path | None:
    """The encoding's file in tiktoken's cache when it is there and whole, else None."""
    known = ENCODING_FILES.get(encoding)
    folder = tiktoken_cache_dir()
    if known is None or folder is None:
        return None
    address, expected = known
    path = folder / hashlib.sha1(address.encode()).hexdigest()
    try:
        data = path.read_bytes()
    except OSError:
        return None
    # A file tiktoken would reject it deletes and downloads again: never let it get that far.
    return path if hashlib.sha256(data).hexdigest() == expected else None


@dataclass(frozen=True, slots=True)
class PromptCount:
    tokens: int
    exact: bool  # counted by the model's own tokenizer


class TokenCounter:
    """Counts prompts per model; encodings are loaded once per process, on first need."""

    _lock = threading.Lock()
    _encodings: dict[str, Encoding | None] = {}  # by encoding name
    _by_model: dict[str, Encoding | None] = {}  # looked up once per model: this runs per call

    def count(self, messages: list[dict[str, Any]], model: str, provider: str) -> PromptCount:
        texts = [content if isinstance(content := message.get("content"), str) else str(content)
                 for message in messages]
        encoding = self.encoding(model) if provider in TIKTOKEN_PROVIDERS else None
        framing = PER_MESSAGE * len(messages) + 1
        if encoding is not None:
            return PromptCount(sum(len(encoding.encode_ordinary(t)) for t in texts) + framing,
                               True)
        return PromptCount(sum(conservative_count(t) for t in texts) + framing, False)

    @classmethod
    def warm(cls, model: str, provider: str) -> None:
        """Look the model's tokenizer up before the first call needs it."""
        if provider in TIKTOKEN_PROVIDERS:
            cls.encoding(model)

    @classmethod
    def encoding(cls, model: str) -> Encoding | None:
        """The model's tiktoken encoding if it can be loaded without the network."""
        known = cls._by_model.get(model, _UNKNOWN)
        if known is not _UNKNOWN:
            return known  # type: ignore[return-value]
        try:
            import tiktoken
        except ImportError:
            return None
        try:
            name = tiktoken.encoding_name_for_model(model)
        except KeyError:
            cls._by_model[model] = None
            return None
        encoding = cls._load(tiktoken, name)
        cls._by_model[model] = encoding
        return encoding

    @classmethod
    def _load(cls, tiktoken: Any, name: str) -> Encoding | None:
        with cls._lock:
            if name in cls._encodings:
                return cls._encodings[name]
            loaded: Encoding | None = None
            if cached_encoding_file(name) is not None:
                try:
                    loaded = tiktoken.get_encoding(name)
                except Exception as exc:  # noqa: BLE001 - any failure falls back to the estimate
                    _log.debug("tiktoken encoding %s not loaded: %s", name, exc)
            else:
                _log.debug("tiktoken encoding %s is not in tiktoken's cache: estimating", name)
            cls._encodings[name] = loaded
            return loaded

    @classmethod
    def forget(cls) -> None:
        """Drop the loaded encodings (tests that change tiktoken's cache folder)."""
        with cls._lock:
            cls._encodings.clear()
            cls._by_model.clear()
