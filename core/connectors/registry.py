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
    return _load(_SOURCES, parsed.scheme)(loaded, parsed)


def open_sink(loaded: "LoadedSpec", uri: str | None = None) -> "Sink":
    parsed = parse_uri(uri or loaded.spec.load.destination)
    return _load(_SINKS, parsed.scheme)(loaded, parsed)
