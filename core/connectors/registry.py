"""Sources and sinks by URI scheme.

`parse_uri` is cheap and imports nothing heavy, so the spec can check schemes; `open_source`
and `open_sink` import the connector module only when a pipeline uses it (asyncpg and aioboto3
are optional extras).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ConnectorError
from core.secrets_mask import header_secrets

if TYPE_CHECKING:
    from core.connectors.base import Sink, Source
    from core.spec import LoadedSpec

FILE_SCHEMES = ("csv", "jsonl", "json")
SQL_SCHEMES = ("sqlite", "postgres", "postgresql")
OBJECT_STORE_SCHEMES = ("s3",)

# scheme -> "module:Class"
_SOURCES: dict[str, str] = {
    "csv": "core.connectors.files:CsvSource",
    "jsonl": "core.connectors.files:JsonlSource",
    "json": "core.connectors.files:JsonSource",
    "sqlite": "core.connectors.sqlite:SqliteSource",
    "postgres": "core.connectors.postgres:PostgresSource",
    "postgresql": "core.connectors.postgres:PostgresSource",
    "s3": "core.connectors.s3:S3Source",
}
_SINKS: dict[str, str] = {
    "csv": "core.connectors.files:CsvSink",
    "jsonl": "core.connectors.files:JsonlSink",
    "json": "core.connectors.files:JsonSink",
    "sqlite": "core.connectors.sqlite:SqliteSink",
    "postgres": "core.connectors.postgres:PostgresSink",
    "postgresql": "core.connectors.postgres:PostgresSink",
    "s3": "core.connectors.s3:S3Sink",
}
# The optional extra each connector's driver comes with.
_EXTRAS = {"asyncpg": "postgres", "aioboto3": "s3", "aiobotocore": "s3", "botocore": "s3",
           "boto3": "s3"}

# The password in scheme://user:password@host/...: the last "@" ends it, whatever it contains.
_PLACEHOLDER_ONLY = re.compile(r"\$\{[^}]*\}")
_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*:)(.*)(@[^@]*)$", re.DOTALL)

SOURCE_SCHEMES = tuple(_SOURCES)
SINK_SCHEMES = tuple(_SINKS)


@dataclass(frozen=True)
class ParsedURI:
    scheme: str
    target: str  # what follows "scheme://"
    uri: str

    @property
    def is_local_file(self) -> bool:
        return self.scheme in FILE_SCHEMES

    @property
    def is_sql(self) -> bool:
        return self.scheme in SQL_SCHEMES

    @property
    def is_object_store(self) -> bool:
        return self.scheme in OBJECT_STORE_SCHEMES

    @property
    def display(self) -> str:
        """The URI without its password: what errors, logs and the history may show."""
        return redact_uri(self.uri)


def redact_uri(uri: str) -> str:
    """`postgres://loom:s3cret@db/x` -> `postgres://loom:***@db/x`; other URIs unchanged.

    A `${NAME}` placeholder is no secret and stays, so people can see which one is used.
    """
    def hide(match: re.Match[str]) -> str:
        password = match.group(2)
        if _PLACEHOLDER_ONLY.fullmatch(password):
            return match.group(0)
        return f"{match.group(1)}***{match.group(3)}"

    return _PASSWORD.sub(hide, uri)


# Keys whose literal values are secrets wherever they appear in a pipeline (api_key:, a webhook,
# a password, a token, an Authorization header).
# The name's last part decides: `api_key`, `slack_webhook`, `access_token` are secrets,
# `max_tokens` is not.
SECRET_KEY = re.compile(r"^(?:.*[_\-.])?(api[_\-]?key|password|passwd|secret|token|authorization|"
                        r"webhook|credentials?|secret[_\-]access[_\-]key)$", re.IGNORECASE)
REDACTED = "***"


def uri_password(uri: str) -> str | None:
    """The literal password written into a URI (None for none, or a ${NAME} placeholder)."""
    match = _PASSWORD.match(uri)
    if match is None or _PLACEHOLDER_ONLY.fullmatch(match.group(2)) or not match.group(2):
        return None
    return match.group(2)


def is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER_ONLY.fullmatch(value.strip()))


# A `headers:` mapping (transform.headers, a judge's headers): every value is a credential by
# nature (`Helicone-Auth`, `Ocp-Apim-Subscription-Key`, `X-Api-Key` ... no name rule can list
# them all), so each is secret whatever its name.
HEADERS_KEY = "headers"


def _hidden(value: str, *, secret: bool, header: bool) -> bool:
    """Whether a literal string is a secret to hide. A header value holding a ${NAME}
    (`Bearer ${GATEWAY_KEY}`) stays as written: the placeholder shows which secret is sent, and
    the rest is the scheme."""
    if not value:
        return False
    if header:
        return "${" not in value
    return secret and not is_placeholder(value)


def redact_tree(value: Any, *, secret: bool = False, header: bool = False) -> Any:
    """A copy of a YAML-shaped tree safe to store: the literal value under a secret-named key
    (`api_key: sk-…`) or in a `headers:` mapping is ***, a password written into a URI is ***,
    ${NAME} placeholders stay (they are no secret, and show which one is used)."""
    if isinstance(value, str):
        if _hidden(value, secret=secret, header=header):
            return REDACTED
        return redact_uri(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: redact_tree(item, secret=secret or (isinstance(key, str)
                                                          and bool(SECRET_KEY.search(key))),
                                 header=header or (key == HEADERS_KEY and isinstance(item, dict)))
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact_tree(item, secret=secret, header=header) for item in value]
    return value


def literal_secrets(value: Any, *, secret: bool = False) -> set[str]:
    """Every literal secret value in a YAML-shaped tree (see redact_tree): for redacting them
    from any text that might quote them."""
    found: set[str] = set()
    stack: list[tuple[Any, bool, bool]] = [(value, secret, False)]
    while stack:
        item, hidden, header = stack.pop()
        if isinstance(item, str):
            if _hidden(item, secret=hidden, header=header):
                found.update(header_secrets({"": item}) if header else (item,))
            elif "://" in item:
                password = uri_password(item)
                if password:
                    found.add(password)
        elif isinstance(item, dict):
            stack.extend((child, hidden or (isinstance(key, str) and bool(SECRET_KEY.search(key))),
                          header or (key == HEADERS_KEY and isinstance(child, dict)))
                         for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, hidden, header) for child in item)
    return found


def redact_override(item: str) -> str:
    """A `--set KEY=VALUE` as it may be stored: a secret key's literal value, or a URI's
    password, as ***."""
    key, sep, value = item.partition("=")
    if not sep:
        return item
    parts = key.strip().split(".")
    if SECRET_KEY.search(parts[-1]) and value.strip() and not is_placeholder(value):
        return f"{key}={REDACTED}"
    if HEADERS_KEY in parts[:-1] and _hidden(value.strip(), secret=False, header=True):
        return f"{key}={REDACTED}"  # a header's value (transform.headers.Helicone-Auth=…)
    return f"{key}={redact_uri(value.strip())}" if "://" in value else item


def parse_uri(uri: str) -> ParsedURI:
    scheme, sep, target = uri.partition("://")
    if not sep:
        return ParsedURI(scheme="", target=uri, uri=uri)
    return ParsedURI(scheme=scheme.lower(), target=target, uri=uri)


def _load(table: dict[str, str], scheme: str) -> Any:
    module_name, _, class_name = table[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in _EXTRAS:
            raise
        extra = _EXTRAS[missing]
        raise ConnectorError(f"{scheme}:// needs the {missing} package: "
                             f"pip install 'loom-aietl[{extra}]'") from exc
    return getattr(module, class_name)


def open_source(loaded: "LoadedSpec", uri: str | None = None) -> "Source":
    """The source for a pipeline's extract section (`uri`: the resolved, secret-bearing form)."""
    parsed = parse_uri(uri or loaded.spec.extract.source)
    source: Source = _load(_SOURCES, parsed.scheme)(loaded, parsed)
    return source


def open_sink(loaded: "LoadedSpec", uri: str | None = None) -> "Sink":
    parsed = parse_uri(uri or loaded.spec.load.destination)
    sink: Sink = _load(_SINKS, parsed.scheme)(loaded, parsed)
    return sink
