"""Write small, real pipelines into a temp folder for tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from core.spec import LoadedSpec

# The loopback server answers with whatever follows `reply:` in the prompt, so the data
# decides the model's answer and a test can make any record pass or fail.
REPLY_PROMPT = 'Classify this review.\n{{ input.text }}\nreply: {{ input.reply }}\n'

# The loopback server is a local openai_compatible server, which has no price unless the
# pipeline gives it one: the pipelines here price it as OpenAI's gpt-4o-mini, so that their runs
# have a cost to check (unless a test changes the model or provider, or sets its own price).
LOOPBACK_PRICE = {"input": 0.15, "output": 0.60, "cache_read": 0.075}


def write_pipeline(folder: Path, *, rows: list[dict[str, Any]] | None = None,
                   prompt: str = REPLY_PROMPT, base_url: str | None = None,
                   data_name: str = "reviews.csv", **sections: Any) -> Path:
    """A pipeline.yaml with a CSV source, the reply prompt and the given sections merged in."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.j2").write_text(prompt, encoding="utf-8")
    if rows is not None:
        write_csv(folder / data_name, rows)
    spec: dict[str, Any] = {
        "name": "test_pipeline",
        "version": "1",
        "extract": {"source": f"csv://{data_name}", "id_field": "id", "batch_size": 50},
        "transform": {
            "prompt": "prompt.j2", "provider": "openai_compatible", "model": "gpt-4o-mini",
            "base_url": base_url or "http://127.0.0.1:9/v1", "api_key": "test-key",
            "max_retries": 3, "timeout_s": 5, "concurrency": 8,
            "output_schema": {"type": "object", "required": ["sentiment"],
                              "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]}}},
        },
        "evaluate": {"evaluators": [
            {"name": "label_ok", "type": "one_of", "field": "output.sentiment",
             "values": ["positive", "negative", "neutral"]},
            {"name": "matches", "type": "exact_match", "field": "output.sentiment",
             "reference_field": "input.expected"},
        ]},
        "load": {"destination": "jsonl://out/results.jsonl"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    transform = spec.get("transform")
    if isinstance(transform, dict) and "price" not in transform and \
            transform.get("model") == "gpt-4o-mini" and \
            transform.get("provider") == "openai_compatible":
        transform["price"] = dict(LOOPBACK_PRICE)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def reply(sentiment: str) -> str:
    return json.dumps({"sentiment": sentiment})


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def connector_spec(folder: Path, source: str, destination: str = "jsonl://out/results.jsonl", *,
                   extract: dict[str, Any] | None = None, load: dict[str, Any] | None = None,
                   **top: Any) -> "LoadedSpec":
    """A real pipeline file around a connector under test, loaded and validated."""
    from core.spec import load_spec

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.j2").write_text("Classify: {{ input.text }}\n", encoding="utf-8")
    scheme, _, target = source.partition("://")
    if scheme in ("csv", "jsonl", "json") and not (folder / target).exists():
        (folder / target).write_text("", encoding="utf-8")  # a sink test's unused source
    spec = {
        "name": "connector_test",
        "extract": {"source": source, **(extract or {})},
        "transform": {"prompt": "prompt.j2", "provider": "openai", "model": "gpt-4o-mini"},
        "load": {"destination": destination, **(load or {})},
        **top,
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return load_spec(path)


async def read_records(source: Any, limit: int | None = None) -> list[Any]:
    """Every record a source yields (for tests: small sources only)."""
    records: list[Any] = []
    try:
        async for batch in source.batches(limit):
            records.extend(batch)
    finally:
        await source.aclose()
    return records


# Text that breaks naive SQL, CSV, JSON and templates; every connector must round-trip it.
HOSTILE_TEXTS = [
    'quotes "double" and \'single\'',
    "'; DROP TABLE reviews; --",
    'Robert"); DROP TABLE "Review Scores";--',
    "unicode: café ñ 日本語 🙌 \u200b עברית",
    "line one\nline two\r\nthree\ttab",
    "back\\slash and a literal \\u0000",
    "{{ 7*7 }} {% if x %}y{% endif %}",
    "",
    "x" * 20_000,
]
