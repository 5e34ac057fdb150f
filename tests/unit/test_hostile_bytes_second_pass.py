"""Hostile bytes, second pass: the bounded YAML loader, terminal-safe printing, and the
siblings of the adversary's breaks (non-finite bounds, a device named as a data file, case
collisions in SQLite column names, big numbers in a JSON array, a stop during a render)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest

from core.connectors.base import rows_by_columns
from core.connectors.parsing import json_rows
from core.errors import ConnectorError, LoadError, PipelineError, StoreUrlError, one_line
from core.prompts import RenderStopped, load_prompts
from core.reporting import make_console
from core.safe_yaml import MAX_YAML_DEPTH, YamlError, load_yaml, load_yaml_with_lines
from core.spec import load_spec
from core.store.engine import StoreTarget
from core.terminal_text import printable
from tests.pipelines import write_pipeline


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t", "expected": "positive",
                                                 "reply": "{}"}])


# ------------------------------------------------------------------ the one YAML loader


@pytest.mark.parametrize("text, words", [
    ("[" * 50_000 + "]" * 50_000, f"more than {MAX_YAML_DEPTH} levels"),
    ("n: " + "9" * 5_000, "5,000 digits"),
    ("a: 1\na: 2\n", "written twice, on line 1 and line 2"),
    ("a: [1, 2\n", "YAML syntax error"),
    ("{a0: &a0 [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)) + "}",
     "100,000"),
])
def test_the_yaml_loader_refuses_with_one_line(text: str, words: str) -> None:
    with pytest.raises(YamlError) as caught:
        load_yaml(text)
    assert words in caught.value.message and "\n" not in caught.value.message


def test_the_yaml_loader_reads_ordinary_documents_and_their_lines() -> None:
    value, lines = load_yaml_with_lines("a:\n  b: [1, 2]\nbig: 18446744073709551616\n")
    assert value == {"a": {"b": [1, 2]}, "big": 2**64}
    assert lines[("a", "b")] == 2 and lines[("big",)] == 3
    assert load_yaml("[" * 150 + "]" * 150) is not None  # deep, but within the limit


def test_a_deep_yaml_schema_file_is_one_line(tmp_path: Path) -> None:
    from core.evaluate.deterministic import read_schema_file

    path = tmp_path / "schema.yaml"
    path.write_text("[" * 50_000 + "]" * 50_000, encoding="utf-8")
    with pytest.raises(PipelineError, match="levels deep"):
        read_schema_file(path, "evaluate.evaluators.0.schema")
    path = tmp_path / "schema.json"
    path.write_text("[" * 50_000 + "]" * 50_000, encoding="utf-8")
    with pytest.raises(PipelineError, match="nested too deep"):
        read_schema_file(path, "evaluate.evaluators.0.schema")


def test_a_non_finite_bound_is_refused(pipeline: Path) -> None:
    """1e309 reads as infinity: as a timeout it would remove the request timeout."""
    with pytest.raises(PipelineError, match="finite"):
        load_spec(pipeline, ["transform.timeout_s=1e309"])
    with pytest.raises(PipelineError, match="finite"):
        load_spec(pipeline, ["transform.timeout_s=.nan"])


def test_a_device_or_a_folder_named_as_the_data_file_is_not_called_missing(
        pipeline: Path) -> None:
    with pytest.raises(PipelineError, match="not a regular file") as caught:
        load_spec(pipeline, ["extract.source=csv:///dev/zero"])
    assert "not found" not in str(caught.value)
    with pytest.raises(PipelineError, match="is a folder"):
        load_spec(pipeline, [f"extract.source=csv://{pipeline.parent}"])


def test_fields_that_collide_in_sqlite_are_refused(pipeline: Path) -> None:
    with pytest.raises(PipelineError, match="one column in SQLite"):
        load_spec(pipeline, ["load.destination=sqlite://out.db", "load.table=t",
                             "load.fields={Label: output.a, label: output.b}"])
    # PostgreSQL's quoted identifiers keep case: the same fields are two columns there
    load_spec(pipeline, ["load.destination=postgresql://h/db", "load.table=t",
                         "load.fields={Label: output.a, label: output.b}"])


# ------------------------------------------------------------------ terminal text


@pytest.mark.parametrize("raw, shown", [
    ("x\nerror: FAKE", "x\\nerror: FAKE"),
    ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
    ("a\x9bb\x7fc", "a\\x9bb\\x7fc"),
    ("evil\u202etxt.exe\u2066", "evil\\u202etxt.exe\\u2066"),
    ("tab\there", "tab\\there"),
    ("plain · ünïcode", "plain · ünïcode"),
])
def test_printable_neutralises_what_a_terminal_obeys(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert one_line(raw) == shown


def test_the_console_neutralises_escapes_that_reach_it_raw() -> None:
    from rich.table import Table
    from rich.text import Text

    console = make_console(width=100)
    with console.capture() as captured:
        table = Table()
        table.add_column("record")
        table.add_row(Text("a\x1b[2Jb\x9b31m\u202e"))
        console.print(table)
        console.print("line \x1b]0;title\x07", highlight=False)
    out = captured.get()
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out


# ------------------------------------------------------------------ the history store URL


@pytest.mark.parametrize("url", ["postgresql://loom:pw-1234567@db.example:notaport/loom",
                                 "postgresql://loom:pw-1234567@[::1/loom"])
def test_a_malformed_store_url_is_a_user_error_with_the_password_masked(url: str) -> None:
    with pytest.raises(StoreUrlError) as caught:
        StoreTarget.parse(url)
    assert caught.value.exit_code == 2 and "pw-1234567" not in str(caught.value)


# ------------------------------------------------------------------ sinks and sources


def test_a_row_whose_keys_fold_together_is_refused_by_a_case_blind_sink() -> None:
    rows = [{"id": "1", "Label": "a", "label": "b"}]
    with pytest.raises(LoadError, match="'Label' and 'label' would be one column"):
        rows_by_columns(rows, [], "sqlite t", fold=str.lower, why="SQLite ignores case")
    assert rows_by_columns(rows, [], "postgres t")  # case-sensitive: two columns


def _elements() -> bytes:
    return json.dumps([{"id": "a"}, {"id": "b", "n": 2**64, "f": 1}, {"id": "c"}]).encode()


def test_a_big_integer_in_a_json_array_loses_no_later_element() -> None:
    rows = list(json_rows(io.BytesIO(_elements()), name="d", where="d"))
    assert [row[0]["id"] for row in rows] == ["a", "b", "c"]
    assert rows[1][0]["n"] == 2**64 and all(row[2] is None for row in rows)


def test_a_big_integer_in_a_stream_that_cannot_be_reread_fails_loudly() -> None:
    class OneWay(io.BytesIO):
        def seekable(self) -> bool:
            return False

    rows = json_rows(OneWay(_elements()), name="d", where="d")
    assert next(rows)[0]["id"] == "a"
    with pytest.raises(ConnectorError, match="element 1 holds a number too large"):
        next(rows)


# ------------------------------------------------------------------ a stop during a render


def test_a_stop_reaches_a_spinning_render_at_once(pipeline: Path) -> None:
    (pipeline.parent / "prompt.j2").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        encoding="utf-8")
    prompts = load_prompts(load_spec(pipeline))

    async def go() -> float:
        render = asyncio.ensure_future(prompts.render_async({"id": "1", "text": "t"}))
        await asyncio.sleep(0.3)
        stopped = time.monotonic()
        prompts.stop()
        with pytest.raises(RenderStopped):
            await render
        took = time.monotonic() - stopped
        with pytest.raises(RenderStopped):  # no new render starts once stopped
            await prompts.render_async({"id": "2", "text": "t"})
        return took

    assert asyncio.run(go()) < 1.0
