"""`${NAME}` placeholders: resolved at run time, never stored.

A placeholder resolves from the keyring (service `loom`), then the environment. A name found
nowhere is an error before any call is made — never the literal `${NAME}` sent to a server.
`$${NAME}` writes a literal `${NAME}`. The resolver remembers every value it handed out so
that error messages and logs can be scrubbed of them (`redact`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from core.errors import SecretError

KEYRING_SERVICE = "loom"
_PLACEHOLDER = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/:#]*")


def has_placeholder(text: str) -> bool:
    return "${" in text


class SecretResolver:
    def __init__(self, *, on_warning: Callable[[str], None] | None = None,
                 use_keyring: bool = True) -> None:
        self._on_warning = on_warning
        self._use_keyring = use_keyring
        self._keyring_broken = False
        self._values: dict[str, str] = {}

    # ------------------------------------------------------------ lookup

    def lookup(self, name: str) -> str | None:
        if name in self._values:
            return self._values[name]
        value = self._from_keyring(name)
        if value is None:
            value = os.environ.get(name)
        if value is not None:
            self._values[name] = value
        return value

    def _from_keyring(self, name: str) -> str | None:
        if not self._use_keyring or self._keyring_broken:
            return None
        try:
            import keyring
            from keyring.errors import KeyringError

            try:
                return keyring.get_password(KEYRING_SERVICE, name)
            except KeyringError as exc:
                self._keyring_unusable(exc)
        except Exception as exc:  # a broken desktop backend (D-Bus gone) must not stop a headless run
            self._keyring_unusable(exc)
        return None

    def _keyring_unusable(self, exc: BaseException) -> None:
        self._keyring_broken = True
        if self._on_warning:
            self._on_warning(
                f"no usable keyring ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "reading secrets from the environment. On a headless machine install keyrings.alt "
                "or set PYTHON_KEYRING_BACKEND.")

    # ------------------------------------------------------------ resolution

    def resolve(self, text: str, *, where: str) -> str:
        """Replace every ${NAME} in `text`. `where` names the key for the error message."""
        if "${" not in text:
            return text

        def substitute(match: re.Match[str]) -> str:
            escaped, name = match.group(1), match.group(2).strip()
            if escaped:
                return "${" + match.group(2) + "}"
            if not _NAME.fullmatch(name):
                raise SecretError(f"{where}: ${{{name}}} is not a valid secret name")
            value = self.lookup(name)
            if value is None:
                raise SecretError(
                    f"{where}: secret {name} is not set (looked in the keyring service "
                    f"'{KEYRING_SERVICE}' and the environment; set it with `loom secrets set {name}` "
                    f"or export {name})")
            return value

        return _PLACEHOLDER.sub(substitute, text)

    def resolve_tree(self, value: Any, *, where: str = "") -> Any:
        """A copy of a YAML-shaped tree with every string's placeholders resolved."""
        if isinstance(value, str):
            return self.resolve(value, where=where or "value")
        if isinstance(value, dict):
            return {k: self.resolve_tree(v, where=f"{where}.{k}" if where else str(k))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_tree(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    # ------------------------------------------------------------ scrubbing

    def redact(self, text: str) -> str:
        """`text` with every secret value this resolver handed out replaced by ***."""
        for value in self._values.values():
            if len(value) >= 4 and value in text:
                text = text.replace(value, "***")
        return text
