"""Sources and sinks by URI scheme.

`parse_uri` is cheap and imports nothing heavy, so the spec can check schemes; `open_source`
and `open_sink` import the connector module only when a pipeline uses it (asyncpg and aioboto3
are optional extras).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.connectors.base import Sink, Source
    from core.spec import LoadedSpec

FILE_SCHEMES = ("csv", "jsonl", "json")

# scheme -> "module:Class"
_SOURCES: dict[str, str] = {
    "csv": "core.connectors.files:CsvSource",
    "jsonl": "core.connectors.files:JsonlSource",
    "json": "core.connectors.files:JsonSource",
    "sqlite": "core.connectors.sqlite:SqliteSource",
}
_SINKS: dict[str, str] = {
    "csv": "core.connectors.files:CsvSink",
    "jsonl": "core.connectors.files:JsonlSink",
    "json": "core.connectors.files:JsonSink",
    "sqlite": "core.connectors.sqlite:SqliteSink",
}

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
        return self.scheme in ("sqlite", "postgres", "postgresql")


def parse_uri(uri: str) -> ParsedURI:
    scheme, sep, target = uri.partition("://")
    if not sep:
        return ParsedURI(scheme="", target=uri, uri=uri)
    return ParsedURI(scheme=scheme.lower(), target=target, uri=uri)


def _load(table: dict[str, str], scheme: str) -> Any:
    module_name, _, class_name = table[scheme].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def open_source(loaded: "LoadedSpec", uri: str | None = None) -> "Source":
    """The source for a pipeline's extract section (`uri`: the resolved, secret-bearing form)."""
    parsed = parse_uri(uri or loaded.spec.extract.source)
    return _load(_SOURCES, parsed.scheme)(loaded, parsed)


def open_sink(loaded: "LoadedSpec", uri: str | None = None) -> "Sink":
    parsed = parse_uri(uri or loaded.spec.load.destination)
    return _load(_SINKS, parsed.scheme)(loaded, parsed)
