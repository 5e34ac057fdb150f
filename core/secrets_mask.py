"""The one masker of secret values: what every text Loom writes is passed through.

A run has one `SecretMasker` (its SecretResolver's): every resolved `${NAME}`, literal
`api_key:`, URI password, header value and provider key from the environment is added to it,
and the LLM transport, the engine's reasons and warnings, the store and `--json` all mask with
it. One rule decides what is a secret worth masking (MIN_SECRET_LENGTH), in one place.

Masking is by exact text: a value as written, URL-quoted, and as JSON writes it. Text decoded
from JSON is masked *after* decoding (`mask_tree`), so an escaped form (`\\u002B` for `+`)
cannot carry a value past the masker. A value transformed otherwise (base64, reversed, split)
is not recognised: no masker can know every encoding.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Shorter values are not masked: a 1-3 character "secret" ("x", "dev") occurs in ordinary text
# and masking it would garble every answer and message while hiding nothing worth hiding. Four
# is the least a local server's toy token has in practice; every real provider key is far longer.
MIN_SECRET_LENGTH = 4

# The environment variables providers read their key from when a pipeline names none
# (core.llm.openai, core.llm.anthropic): their values are secrets of every run that has them
# set, whether or not the pipeline writes ${OPENAI_API_KEY}.
PROVIDER_KEY_VARIABLES: dict[str, str] = {"openai": "OPENAI_API_KEY",
                                          "anthropic": "ANTHROPIC_API_KEY"}
# Other credentials Loom's connectors read from the environment (boto3 for s3:// and AWS
# Secrets Manager).
_OTHER_KEY_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def environment_keys() -> list[str]:
    """The values of the credential variables set in the environment (see above)."""
    names = (*PROVIDER_KEY_VARIABLES.values(), *_OTHER_KEY_VARIABLES)
    return [value for name in names if (value := os.environ.get(name, ""))]


def header_secrets(headers: dict[str, str]) -> tuple[str, ...]:
    """The secrets of the headers a pipeline sends: every value (a gateway key under a name no
    rule could guess, `Helicone-Auth`, `Ocp-Apim-Subscription-Key`), and the credential of an
    `Authorization`-style `Scheme credential` value on its own, for a server that echoes only
    that part."""
    found: list[str] = []
    for value in headers.values():
        found.append(value)
        scheme, space, credential = value.strip().partition(" ")
        if space and scheme.isalpha() and credential.strip():
            found.append(credential.strip())
    return tuple(found)


def _forms(value: str) -> set[str]:
    """The texts a value may appear as in what Loom writes or receives raw."""
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe="")}
    # Inside a JSON string (a body masked before it is decoded, a JSON column): escaped quotes
    # and backslashes, and the ASCII-only form.
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


class SecretMasker:
    """Known secret values, and the masking of them in text, bytes and decoded JSON."""

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._values: set[str] = set()
        self._order: list[str] = []
        self._order_bytes: list[bytes] = []
        self.add(values)

    def add(self, values: Iterable[str | None]) -> None:
        """Remember `values` (and their quoted forms); too short or empty ones are ignored."""
        grew = False
        for value in values:
            if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
                continue
            for form in _forms(value):
                if form not in self._values:
                    self._values.add(form)
                    grew = True
        if grew:
            # Longest first: a value that contains another is replaced whole.
            self._order = sorted(self._values, key=len, reverse=True)
            self._order_bytes = [form.encode("utf-8") for form in self._order]

    def __bool__(self) -> bool:
        return bool(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def mask(self, text: str) -> str:
        for value in self._order:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def mask_bytes(self, content: bytes) -> bytes:
        for value in self._order_bytes:
            if value in content:
                content = content.replace(value, MASK.encode())
        return content

    def mask_tree(self, value: Any) -> Any:
        """A copy of decoded JSON with every string (keys too) masked."""
        if not self._order:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {self.mask(k) if isinstance(k, str) else k: self.mask_tree(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_tree(item) for item in value]
        return value
