"""`${NAME}` placeholders: resolved at run time, never stored.

A placeholder resolves from the keyring (service `loom`), then the environment, then AWS Secrets
Manager when `credentials: {provider: aws_secrets, region: ...}` is set in config.yaml.
`${aws:secret-id#json-key}` reads one key of a JSON secret from Secrets Manager directly
(`${aws:secret-id}` the whole secret). A name found nowhere is an error naming it, before any
call is made — never the literal `${NAME}` sent to a server. `$${NAME}` writes a literal
`${NAME}`.

The resolver remembers every value it handed out so that error messages and logs can be
scrubbed of them (`redact`). `KeyringSecrets` is what `loom secrets set|list|delete` and the
workbench use to manage the keyring; it never shows a value.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from core.errors import SecretError
from core.secrets_mask import SecretMasker, environment_keys

if TYPE_CHECKING:
    from core.config import CredentialsConfig

KEYRING_SERVICE = "loom"
AWS_PREFIX = "aws:"
# Keyring backends cannot list what they hold, so the names Loom stored are kept in the
# keyring too, under a name no placeholder can have ("@" is not allowed in one).
NAMES_INDEX = "@loom-secret-names"
_PLACEHOLDER = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/:#]*")
# What `loom secrets set` accepts: an environment-variable-like name.
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_HEADLESS_HINT = ("on a headless machine install keyrings.alt or set PYTHON_KEYRING_BACKEND "
                  "(see docs/how-to/secrets.md)")


def placeholder_names(value: Any) -> set[str]:
    """The secret names a YAML-shaped tree's `${NAME}` placeholders ask for (not `$${NAME}`,
    which is a literal, nor `${aws:…}`, which only AWS Secrets Manager answers)."""
    if isinstance(value, str):
        if "${" not in value:
            return set()
        return {match.group(2).strip() for match in _PLACEHOLDER.finditer(value)
                if not match.group(1) and SECRET_NAME.fullmatch(match.group(2).strip())}
    if isinstance(value, dict):
        return set().union(*(placeholder_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholder_names(v) for v in value))
    return set()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _first_sentence(exc: BaseException) -> str:
    """The gist of a keyring failure (keyring's own messages run to a paragraph)."""
    text = _first_line(exc)
    head, dot, _ = text.partition(". ")
    return head if dot else text.rstrip(".")


class SecretResolver:
    def __init__(self, *, on_warning: Callable[[str], None] | None = None,
                 use_keyring: bool = True, credentials: "CredentialsConfig | None" = None) -> None:
        self._on_warning = on_warning
        self._use_keyring = use_keyring
        self._keyring_broken: str | None = None
        self._values: dict[str, str] = {}
        # Every value handed out, and the provider keys of the environment (sent even when no
        # ${NAME} names them): the run's one masker, shared with its LLM transport.
        self.masker = SecretMasker(environment_keys())
        self._credentials = credentials
        self._aws: _AwsSecrets | None = None

    @property
    def uses_aws(self) -> bool:
        return self._credentials is not None and self._credentials.provider == "aws_secrets"

    # ------------------------------------------------------------ lookup

    def lookup(self, name: str) -> str | None:
        if name in self._values:
            return self._values[name]
        if name.startswith(AWS_PREFIX):
            value = self._from_aws_reference(name)
        else:
            value = self._from_keyring(name)
            if value is None:
                value = os.environ.get(name)
            if value is None and self.uses_aws:
                value = self._aws_client().secret_string(name, reference=name)
        if value is not None:
            self._values[name] = value
            self.masker.add([value])
        return value

    def _from_keyring(self, name: str) -> str | None:
        if not self._use_keyring or self._keyring_broken:
            return None
        try:
            import keyring

            return keyring.get_password(KEYRING_SERVICE, name)
        except Exception as exc:  # a broken desktop backend (D-Bus gone) must not stop a headless run
            self._keyring_unusable(exc)
        return None

    def _keyring_unusable(self, exc: BaseException) -> None:
        self._keyring_broken = f"{type(exc).__name__}: {_first_sentence(exc)}"
        if self._on_warning:
            hint = _HEADLESS_HINT[0].upper() + _HEADLESS_HINT[1:]
            self._on_warning(f"no usable keyring ({self._keyring_broken}); reading secrets from "
                             f"the environment instead. {hint}.")

    def _from_aws_reference(self, name: str) -> str | None:
        """`aws:secret-id#json-key` (or `aws:secret-id`, the whole secret)."""
        reference = name[len(AWS_PREFIX):]
        secret_id, sep, key = reference.rpartition("#")
        if not sep:
            secret_id, key = reference, ""
        if not secret_id:
            raise SecretError(f"${{{name}}}: write ${{aws:SECRET_ID#KEY}} or ${{aws:SECRET_ID}}")
        text = self._aws_client().secret_string(secret_id, reference=name)
        if text is None or not key:
            return text
        try:
            document = json.loads(text)
        except ValueError:
            raise SecretError(f"secret {name}: AWS secret {secret_id!r} is not a JSON object, so it "
                              f"has no key {key!r} (write ${{aws:{secret_id}}} for the whole "
                              f"value)") from None
        if not isinstance(document, dict) or key not in document:
            keys = ", ".join(sorted(map(str, document))) if isinstance(document, dict) else "none"
            raise SecretError(f"secret {name}: AWS secret {secret_id!r} has no key {key!r} "
                              f"(its keys: {keys})")
        value = document[key]
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value)

    def _aws_client(self) -> "_AwsSecrets":
        if self._aws is None:
            credentials = self._credentials
            self._aws = _AwsSecrets(region=credentials.region if credentials else None,
                                    endpoint_url=credentials.endpoint_url if credentials else None)
        return self._aws

    # ------------------------------------------------------------ resolution

    def resolve(self, text: str, *, where: str, url: bool = False) -> str:
        """Replace every ${NAME} in `text`. `where` names the key for the error message.

        `url=True`: `text` is a URL, and a value placed in its user:password part is
        percent-encoded, so a password holding "@", "/" or ":" cannot change where it connects.
        """
        if "${" not in text:
            return text
        userinfo_end = -1
        if url and "://" in text:
            scheme_end = text.index("://") + 3
            at = text.rfind("@")
            userinfo_end = at if at > scheme_end else -1

        def substitute(match: re.Match[str]) -> str:
            escaped, name = match.group(1), match.group(2).strip()
            if escaped:
                return "${" + match.group(2) + "}"
            if not _NAME.fullmatch(name):
                raise SecretError(f"{where}: ${{{name}}} is not a valid secret name")
            value = self.lookup(name)
            if value is None:
                raise SecretError(f"{where}: {self._not_found(name)}")
            if match.start() < userinfo_end:
                return urllib.parse.quote(value, safe="")  # the masker knows this form too
            return value

        return _PLACEHOLDER.sub(substitute, text)

    def _not_found(self, name: str) -> str:
        if name.startswith(AWS_PREFIX):
            return f"secret {name} is not set (AWS Secrets Manager has no such secret)"
        places = [f"the keyring service '{KEYRING_SERVICE}'", "the environment"]
        if self.uses_aws:
            places.append("AWS Secrets Manager")
        broken = f"; the keyring is unusable ({self._keyring_broken})" if self._keyring_broken else ""
        return (f"secret {name} is not set (looked in {', '.join(places[:-1])} and {places[-1]}"
                f"{broken}; set it with `loom secrets set {name}` or export {name})")

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

    def add_known(self, values: "set[str] | list[str]") -> None:
        """Secret values this resolver did not hand out (literal keys, URI passwords, header
        values) that `redact` must hide all the same."""
        self.masker.add(values)

    def redact(self, text: str) -> str:
        """`text` with every known secret value replaced by *** (core.secrets_mask)."""
        return self.masker.mask(text)


class _AwsSecrets:
    """AWS Secrets Manager through boto3 (the `s3` extra), one call per secret id."""

    def __init__(self, *, region: str | None, endpoint_url: str | None) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._cache: dict[str, str | None] = {}

    def _connect(self, reference: str) -> Any:
        if self._client is None:
            try:
                import boto3
            except ModuleNotFoundError:
                raise SecretError(f"secret {reference}: reading AWS Secrets Manager needs boto3: "
                                  "pip install 'loom-aietl[s3]'") from None
            self._client = boto3.client("secretsmanager", region_name=self.region,
                                        endpoint_url=self.endpoint_url)
        return self._client

    def secret_string(self, secret_id: str, *, reference: str) -> str | None:
        """The secret's text, or None when Secrets Manager has no such secret."""
        if secret_id in self._cache:
            return self._cache[secret_id]
        client = self._connect(reference)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = client.get_secret_value(SecretId=secret_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                self._cache[secret_id] = None
                return None
            message = exc.response.get("Error", {}).get("Message", "") or _first_line(exc)
            raise SecretError(f"secret {reference}: AWS Secrets Manager refused to read "
                              f"{secret_id!r}: {code}: {message}") from None
        except BotoCoreError as exc:
            raise SecretError(f"secret {reference}: cannot reach AWS Secrets Manager: "
                              f"{_first_line(exc)}") from None
        text: str | None = answer.get("SecretString")
        if text is None and answer.get("SecretBinary") is not None:
            try:
                text = bytes(answer["SecretBinary"]).decode("utf-8")
            except UnicodeDecodeError:
                raise SecretError(f"secret {reference}: AWS secret {secret_id!r} is binary, "
                                  "not text") from None
        self._cache[secret_id] = text
        return text


# ---------------------------------------------------------------- managing the keyring


class KeyringSecrets:
    """Secrets in the keyring under service `loom`: set, list (names only) and delete.

    Every call is blocking (a desktop keyring may ask D-Bus): the workbench calls these from a
    worker thread.
    """

    service = KEYRING_SERVICE

    @staticmethod
    def check_name(name: str) -> str:
        if not SECRET_NAME.fullmatch(name or ""):
            raise SecretError(f"{name!r} is not a secret name: use letters, digits, _ . and -, "
                              "starting with a letter or _ (like an environment variable)")
        return name

    def _keyring(self) -> Any:
        import keyring

        return keyring

    def _unusable(self, exc: BaseException, name: str | None = None) -> SecretError:
        instead = f", or export {name} instead" if name else ""
        return SecretError(f"no usable keyring ({type(exc).__name__}: {_first_sentence(exc)}); "
                           f"{_HEADLESS_HINT}{instead}")

    def backend(self) -> str:
        """The keyring backend in use, e.g. `keyrings.alt.file.PlaintextKeyring`."""
        try:
            backend = self._keyring().get_keyring()
        except Exception as exc:
            raise self._unusable(exc) from exc
        kind = type(backend)
        return f"{kind.__module__}.{kind.__qualname__}"

    def _index(self) -> list[str]:
        raw = self._keyring().get_password(self.service, NAMES_INDEX)
        if not raw:
            return []
        try:
            names = json.loads(raw)
        except ValueError:
            return []
        return sorted({n for n in names if isinstance(n, str)}) if isinstance(names, list) else []

    def _save_index(self, names: list[str]) -> None:
        self._keyring().set_password(self.service, NAMES_INDEX, json.dumps(sorted(set(names))))

    def names(self) -> list[str]:
        """The names of the secrets Loom keeps in the keyring (never their values)."""
        try:
            keyring = self._keyring()
            return [n for n in self._index() if keyring.get_password(self.service, n) is not None]
        except SecretError:
            raise
        except Exception as exc:
            raise self._unusable(exc) from exc

    def set(self, name: str, value: str) -> None:
        self.check_name(name)
        if not value:
            raise SecretError(f"secret {name}: the value is empty")
        try:
            keyring = self._keyring()
            keyring.set_password(self.service, name, value)
            # Some backends accept a value and keep nothing (keyring.backends.null): reading it
            # back is the only way to know it was stored.
            stored = keyring.get_password(self.service, name) == value
            if stored:
                names = self._index()
                if name not in names:
                    self._save_index([*names, name])
        except Exception as exc:
            raise self._unusable(exc, name) from exc
        if not stored:
            raise SecretError(
                f"secret {name}: the keyring backend {self.backend()} did not keep it; install "
                "keyrings.alt or set PYTHON_KEYRING_BACKEND (see docs/how-to/secrets.md)")

    def delete(self, name: str) -> None:
        self.check_name(name)
        try:
            keyring = self._keyring()
            from keyring.errors import PasswordDeleteError

            present = keyring.get_password(self.service, name) is not None
            if present:
                try:
                    keyring.delete_password(self.service, name)
                except PasswordDeleteError:
                    present = False
            names = self._index()
            if name in names:
                self._save_index([n for n in names if n != name])
        except Exception as exc:
            raise self._unusable(exc, name) from exc
        if not present:
            raise SecretError(f"secret {name} is not in the keyring (service '{self.service}')")
