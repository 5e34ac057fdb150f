"""Two crashes mypy found when core was first type-checked: an exception read for an attribute
only some of the caught exception types have. Each is one line now, as its neighbours are."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import PipelineError, ProviderError
from core.evaluate.deterministic import read_schema_file
from core.llm.replay import read_cassette


def test_a_schema_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    # UnicodeDecodeError has no `strerror` (OSError does): this was an AttributeError.
    path = tmp_path / "schema.json"
    path.write_bytes(b'{"type": "object", "title": "\xff"}')
    with pytest.raises(PipelineError, match="cannot read schema file .*schema.json: 'utf-8'"):
        read_schema_file(path, "evaluate.evaluators.0.schema")


def test_a_cassette_line_with_an_over_long_integer_is_one_line(tmp_path: Path) -> None:
    # json.loads raises a plain ValueError (no `msg`) for an integer past Python's digit limit.
    path = tmp_path / "cassette.jsonl"
    path.write_text('{"loom_cassette": 1, "note": "hand-written"}\n'
                    '{"key": "k", "response": {"text": ' + "1" * 5000 + '}}\n', encoding="utf-8")
    with pytest.raises(ProviderError, match=r"cassette.jsonl:2: malformed cassette: not JSON \("):
        read_cassette(path)
