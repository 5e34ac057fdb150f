"""SQLite source and sink on real database files, and bound-parameter query templates."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.connectors.base import Source
from core.records import Record
from core.connectors.registry import open_sink, open_source
from core.connectors.sql_params import render_sql
from core.connectors.sqlite import SqliteSink, SqliteSource
from core.errors import ConnectorError, LoadError, PipelineError, SecurityError, TemplateError
from core.spec import LoadedSpec, load_spec

INJECTION = "'; DROP TABLE reviews; --"


def make_spec(folder: Path, source: str = "sqlite://src.db",
              destination: str = "sqlite://out.db", *, extract: dict[str, Any] | None = None,
              load: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> LoadedSpec:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.j2").write_text("Classify: {{ input.text }}\n", encoding="utf-8")
    spec: dict[str, Any] = {
        "name": "sqlite_test",
        "params": params or {},
        "extract": {"source": source, **(extract or {"table": "reviews"})},
        "transform": {"prompt": "prompt.j2", "provider": "openai", "model": "gpt-4o-mini"},
        "load": {"destination": destination, "table": "scores", **(load or {})},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return load_spec(path)


def make_reviews(path: Path, count: int = 5) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, text TEXT, stars REAL, "
                     "created_at TEXT, photo BLOB)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?)", [
            (i, f"review {i}", i / 2, f"2024-01-{i:02d}", b"\x00\xffpng" if i == 2 else None)
            for i in range(1, count + 1)])
        conn.execute("INSERT INTO reviews (id, text) VALUES (?, ?)", (100, INJECTION))
    conn.close()


async def read_all(source: Source, limit: int | None = None) -> list[Record]:
    return [r async for batch in source.batches(limit) for r in batch]


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- render_sql


def test_every_expression_becomes_a_bound_parameter() -> None:
    sql, values = render_sql(
        "SELECT * FROM t WHERE a > {{ params.since }} AND b = {{ 5 }}"
        "{% if params.ids %} AND id IN ({% for i in params.ids %}{% if not loop.first %}, "
        "{% endif %}{{ i }}{% endfor %}){% endif %}{% if params.absent_ok is defined %}x{% endif %}",
        {"since": INJECTION, "ids": [7, 8]}, "qmark")
    assert sql == "SELECT * FROM t WHERE a > ? AND b = ? AND id IN (?, ?)"
    assert values == [INJECTION, 5, 7, 8]

    sql, values = render_sql("SELECT {{ params.a }}, {{ params.b }} FROM t WHERE x = {{ params.a }}",
                             {"a": 1, "b": None}, "numeric_dollar")
    assert sql == "SELECT $1, $2 FROM t WHERE x = $3"
    assert values == [1, None, 1]


def test_an_inline_if_without_else_binds_nothing() -> None:
    template = "SELECT * FROM t WHERE 1 = 1 {{ 'AND' if params.a }} {{ params.a if params.a }}"
    assert render_sql(template, {"a": 0}, "qmark") == ("SELECT * FROM t WHERE 1 = 1  ", [])
    with pytest.raises(TemplateError, match="nope"):
        render_sql("SELECT {{ params.nope }}", {}, "qmark")


def test_a_query_without_expressions_is_unchanged() -> None:
    assert render_sql("SELECT '?' FROM t", {}, "qmark") == ("SELECT '?' FROM t", [])


def test_query_template_errors_are_one_line_naming_the_key() -> None:
    with pytest.raises(TemplateError) as caught:
        render_sql("SELECT * FROM t WHERE a > {{ params.since }}", {"until": 1}, "qmark",
                   file="p.yaml", key="extract.query")
    assert str(caught.value).startswith("p.yaml: extract.query: ")
    assert "since" in str(caught.value) and "defined params: until" in str(caught.value)

    with pytest.raises(TemplateError, match="without quotes"):
        render_sql("SELECT * FROM t WHERE a = '{{ params.a }}'", {"a": 1}, "qmark")
    with pytest.raises(TemplateError, match="template syntax error"):
        render_sql("SELECT {{ params.a ", {"a": 1}, "qmark")
    with pytest.raises(SecurityError):
        render_sql("SELECT {{ params.a.__class__.__mro__ }}", {"a": 1}, "qmark")


# ---------------------------------------------------------------- source


async def test_table_source_streams_rows_in_rowid_order(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, extract={"table": "reviews", "id_field": "id", "batch_size": 2})
    source = open_source(loaded)
    assert isinstance(source, SqliteSource)
    assert await source.count_hint() == 6
    batches = [b async for b in source.batches()]
    assert [len(b) for b in batches] == [2, 2, 2]
    records = [r for b in batches for r in b]
    assert [r.id for r in records] == ["1", "2", "3", "4", "5", "100"]
    assert records[0].data == {"id": 1, "text": "review 1", "stars": 0.5, "created_at": "2024-01-01",
                               "photo": None}
    assert records[1].data["photo"] == "AP9wbmc="  # bytes as base64 text
    assert records[0].origin == "src.db:reviews:1"
    assert [len(b) async for b in source.batches(limit=3)] == [2, 1]


async def test_query_source_binds_params_so_an_injection_stays_data(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, extract={
        "query": "SELECT id, text FROM reviews WHERE text = {{ params.needle }} "
                 "OR created_at > {{ params.since }} ORDER BY id"},
        params={"needle": INJECTION, "since": "2024-01-03"})
    source = open_source(loaded)
    assert await source.count_hint() is None
    records = await read_all(source)
    assert [r.data for r in records] == [{"id": 4, "text": "review 4"}, {"id": 5, "text": "review 5"},
                                         {"id": 100, "text": INJECTION}]
    assert query(tmp_path / "src.db", "SELECT COUNT(*) FROM reviews") == [(6,)]


async def test_a_yaml_date_param_binds_as_iso_text(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, params={"since": dt.date(2024, 1, 4)}, extract={
        "query": "SELECT id FROM reviews WHERE created_at >= {{ params.since }} ORDER BY id"})
    assert loaded.spec.params["since"] == dt.date(2024, 1, 4)  # YAML reads it as a date
    records = await read_all(open_source(loaded))
    assert [r.data["id"] for r in records] == [4, 5]


async def test_views_and_without_rowid_tables_are_read(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    with sqlite3.connect(tmp_path / "src.db") as conn:
        conn.execute("CREATE VIEW good AS SELECT id, text FROM reviews WHERE stars >= 2")
        conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, n INT) WITHOUT ROWID")
        conn.executemany("INSERT INTO tags VALUES (?, ?)", [("b", 2), ("a", 1)])
    conn.close()
    view = make_spec(tmp_path / "v", f"sqlite://{tmp_path / 'src.db'}", extract={"table": "good"})
    assert [r.data["id"] for r in await read_all(open_source(view))] == [4, 5]
    tags = make_spec(tmp_path / "t", f"sqlite://{tmp_path / 'src.db'}", extract={"table": "tags"})
    assert sorted(r.data["name"] for r in await read_all(open_source(tags))) == ["a", "b"]


async def test_sql_errors_are_one_line_connector_errors(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    missing = make_spec(tmp_path / "a", f"sqlite://{tmp_path / 'src.db'}",
                        extract={"query": "SELECT * FROM nope"})
    with pytest.raises(ConnectorError) as caught:
        await read_all(open_source(missing))
    assert str(caught.value).startswith("extract.query: no such table: nope")

    syntax = make_spec(tmp_path / "b", f"sqlite://{tmp_path / 'src.db'}",
                       extract={"query": "SELEC id FROM reviews"})
    with pytest.raises(ConnectorError, match="extract.query: .*syntax error"):
        await read_all(open_source(syntax))

    no_table = make_spec(tmp_path / "c", f"sqlite://{tmp_path / 'src.db'}", extract={"table": "nope"})
    with pytest.raises(ConnectorError, match="extract.table: no such table"):
        await read_all(open_source(no_table))
    with pytest.raises(ConnectorError, match="extract.table: no such table"):
        await open_source(no_table).count_hint()

    # A missing database is a pipeline error at validation; one deleted after it, a connector error.
    with pytest.raises(PipelineError, match="extract.source: database not found: absent.db"):
        make_spec(tmp_path / "d", "sqlite://absent.db")
    (tmp_path / "e").mkdir()
    make_reviews(tmp_path / "e" / "gone.db")
    gone = make_spec(tmp_path / "e", "sqlite://gone.db")
    (tmp_path / "e" / "gone.db").unlink()
    with pytest.raises(ConnectorError, match="gone.db: no such database file"):
        await read_all(open_source(gone))


async def test_the_source_is_read_only(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, extract={"query": "DELETE FROM reviews RETURNING id"})
    with pytest.raises(ConnectorError, match="readonly"):
        await read_all(open_source(loaded))
    assert query(tmp_path / "src.db", "SELECT COUNT(*) FROM reviews") == [(6,)]


async def test_duplicate_result_columns_must_be_aliased(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, extract={"query": "SELECT a.id, b.id FROM reviews a JOIN reviews b USING (id)"})
    with pytest.raises(ConnectorError, match="column 'id' appears twice"):
        await read_all(open_source(loaded))


async def test_text_that_is_not_utf8_is_an_extract_error_not_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER, text TEXT)")
        conn.execute("INSERT INTO reviews VALUES (1, 'fine')")
        conn.execute("INSERT INTO reviews VALUES (2, CAST(x'636166e9' AS TEXT))")
        conn.execute("INSERT INTO reviews VALUES (3, 'also fine')")
    conn.close()
    records = await read_all(open_source(make_spec(tmp_path)))
    assert [r.extract_error for r in records] == [None, "invalid UTF-8 in column 'text'", None]
    assert records[1].data == {"id": 2, "text": "caf\ufffd"}
    assert records[2].data == {"id": 3, "text": "also fine"}


# ---------------------------------------------------------------- sink


async def test_append_creates_the_table_from_the_first_batch_and_adds_columns(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, load={"table": "Sentiment Scores", "mode": "append"})
    sink = open_sink(loaded)
    assert isinstance(sink, SqliteSink)
    await sink.open("r1")
    await sink.write([{"record_id": "1", "label": "pos", "score": 0.9, "n": 3, "ok": True,
                       "meta": {"a": [1, "é"]}, "note": None}])
    await sink.write([{"record_id": "2", "label": "neg", "reason": "new column", "n": 4}])
    await sink.commit()
    out = tmp_path / "out.db"
    columns = query(out, "SELECT name, type FROM pragma_table_info('Sentiment Scores')")
    assert columns == [("record_id", "TEXT"), ("label", "TEXT"), ("score", "REAL"), ("n", "INTEGER"),
                       ("ok", "INTEGER"), ("meta", "TEXT"), ("note", ""), ("reason", "TEXT")]
    assert query(out, 'SELECT record_id, label, score, n, ok, meta, note, reason FROM "Sentiment Scores"') == [
        ("1", "pos", 0.9, 3, 1, '{"a": [1, "é"]}', None, None),
        ("2", "neg", None, 4, None, None, None, "new column"),
    ]
    assert query(out, "PRAGMA journal_mode") == [("wal",)]

    again = open_sink(loaded)
    await again.open("r2")
    await again.write([{"record_id": "3", "label": "neu"}])
    await again.commit()
    assert query(out, 'SELECT record_id FROM "Sentiment Scores" ORDER BY rowid') == [("1",), ("2",), ("3",)]


async def test_upsert_twice_leaves_no_duplicates(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, extract={"table": "reviews", "id_field": "review_id"},
                       load={"mode": "upsert"})  # the key defaults to the id column
    rows = [{"review_id": str(i), "label": "pos", "score": i} for i in range(5)]
    for run, label in (("r1", "pos"), ("r2", "neg")):
        sink = open_sink(loaded)
        await sink.open(run)
        await sink.write([{**row, "label": label} for row in rows[:3]])
        await sink.write([{**row, "label": label} for row in rows[3:]])
        await sink.commit()
    out = tmp_path / "out.db"
    assert query(out, "SELECT COUNT(*), COUNT(DISTINCT review_id) FROM scores") == [(5, 5)]
    assert query(out, "SELECT DISTINCT label FROM scores") == [("neg",)]

    # a row without the key's columns leaves the others untouched
    sink = open_sink(loaded)
    await sink.open("r3")
    await sink.write([{"review_id": "1", "score": 100}])
    await sink.commit()
    assert query(out, "SELECT label, score FROM scores WHERE review_id = '1'") == [("neg", 100)]


async def test_upsert_into_an_existing_table_adds_a_unique_index(tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    with sqlite3.connect(out) as conn:
        conn.execute('CREATE TABLE "My Scores" (id TEXT, region TEXT, score REAL)')
        conn.execute("""INSERT INTO "My Scores" VALUES ('1', 'eu', 0.1)""")
    conn.close()
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, load={"table": "My Scores", "mode": "upsert", "key": ["id", "region"]})
    for _ in range(2):
        sink = open_sink(loaded)
        await sink.open("r1")
        await sink.write([{"id": "1", "region": "eu", "score": 0.5}, {"id": "1", "region": "us", "score": 0.7}])
        await sink.commit()
    assert query(out, 'SELECT id, region, score FROM "My Scores" ORDER BY region') == [
        ("1", "eu", 0.5), ("1", "us", 0.7)]


async def test_upsert_refuses_a_table_whose_rows_already_repeat_the_key(tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    with sqlite3.connect(out) as conn:
        conn.execute("CREATE TABLE scores (id TEXT, score REAL)")
        conn.executemany("INSERT INTO scores VALUES (?, ?)", [("1", 0.1), ("1", 0.2)])
    conn.close()
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, load={"mode": "upsert", "key": "id"})
    with pytest.raises(ConnectorError) as caught:
        await open_sink(loaded).open("r1")
    assert "cannot upsert on key (id)" in str(caught.value) and "duplicates" in str(caught.value)


async def test_replace_swaps_the_rows_in_at_commit(tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    with sqlite3.connect(out) as conn:
        conn.execute("CREATE TABLE scores (record_id TEXT, label TEXT)")
        conn.executemany("INSERT INTO scores VALUES (?, ?)", [("old1", "x"), ("old2", "y")])
    conn.close()
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, load={"mode": "replace"})

    sink = open_sink(loaded)
    await sink.open("run-1")
    await sink.write([{"record_id": "n1", "label": "pos"}])
    await sink.write([{"record_id": "n2", "label": "neg", "score": 0.5}])
    # not committed: other connections still see the old rows, and no scratch table in the file
    assert query(out, "SELECT record_id FROM scores ORDER BY rowid") == [("old1",), ("old2",)]
    await sink.commit()
    assert query(out, "SELECT record_id, label, score FROM scores ORDER BY rowid") == [
        ("n1", "pos", None), ("n2", "neg", 0.5)]
    assert query(out, "SELECT name FROM sqlite_master WHERE name LIKE 'loom_scratch%'") == []

    aborted = open_sink(loaded)
    await aborted.open("run-2")
    await aborted.write([{"record_id": "never", "label": "seen"}])
    await aborted.abort()
    assert query(out, "SELECT record_id FROM scores ORDER BY rowid") == [("n1",), ("n2",)]

    empty = open_sink(loaded)
    await empty.open("run-3")
    await empty.commit()
    assert query(out, "SELECT COUNT(*) FROM scores") == [(0,)]


async def test_replace_creates_a_missing_table(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, destination="sqlite://nested/dir/out.db",
                       load={"mode": "replace", "table": "Fresh"})
    await _write(loaded, [[{"record_id": "1", "n": 2}]])
    out = tmp_path / "nested" / "dir" / "out.db"
    assert query(out, 'SELECT record_id, n, typeof(n) FROM "Fresh"') == [("1", 2, "integer")]


async def test_a_refused_batch_is_a_load_error_and_the_sink_stays_usable(tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    with sqlite3.connect(out) as conn:
        conn.execute("CREATE TABLE scores (record_id TEXT NOT NULL, score REAL CHECK (score <= 1))")
    conn.close()
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path)
    sink = open_sink(loaded)
    await sink.open("r1")
    await sink.write([{"record_id": "1", "score": 0.5}])
    with pytest.raises(LoadError) as caught:
        await sink.write([{"record_id": "2", "score": 0.1}, {"record_id": "3", "score": 7}])
    message = str(caught.value)
    assert "table scores" in message and "CHECK constraint failed" in message and "\n" not in message
    with pytest.raises(LoadError, match="NOT NULL"):
        await sink.write([{"record_id": None, "score": 0.2, "brand_new": "x"}])
    await sink.write([{"record_id": "4", "score": 1.0, "brand_new": "y"}])  # ALTER after a refusal
    await sink.commit()
    assert query(out, "SELECT record_id, score, brand_new FROM scores ORDER BY rowid") == [
        ("1", 0.5, None), ("4", 1.0, "y")]  # the refused batches were rolled back whole


async def test_an_upsert_row_without_its_key_is_refused(tmp_path: Path) -> None:
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, load={"mode": "upsert", "key": "id"})
    sink = open_sink(loaded)
    await sink.open("r1")
    with pytest.raises(LoadError, match="no value for key 'id'"):
        await sink.write([{"id": "1"}, {"score": 2}])
    await sink.write([{"id": "1", "score": 2}])
    await sink.commit()
    assert query(tmp_path / "out.db", "SELECT id, score FROM scores") == [("1", 2)]


async def test_a_view_is_not_a_destination(tmp_path: Path) -> None:
    out = tmp_path / "out.db"
    with sqlite3.connect(out) as conn:
        conn.execute("CREATE VIEW scores AS SELECT 1 AS x")
    conn.close()
    make_reviews(tmp_path / "src.db")
    with pytest.raises(ConnectorError, match="is a view, not a table"):
        await open_sink(make_spec(tmp_path)).open("r1")


async def _write(loaded: LoadedSpec, batches: list[list[dict[str, Any]]]) -> None:
    sink = open_sink(loaded)
    await sink.open("run")
    for batch in batches:
        await sink.write(batch)
    await sink.commit()


@pytest.mark.parametrize("mode", ["append", "upsert"])
async def test_writers_that_opened_before_the_table_existed_share_it(tmp_path: Path, mode: str) -> None:
    # Parallel shards: every sink opens while the table does not exist yet; the first batch
    # creates it, and the others' batches must go into it, new columns included.
    make_reviews(tmp_path / "src.db")
    loaded = make_spec(tmp_path, extract={"table": "reviews", "id_field": "id"}, load={"mode": mode})
    sinks = [open_sink(loaded) for _ in range(3)]
    for i, sink in enumerate(sinks):
        await sink.open(f"shard-{i}")
    await sinks[0].write([{"id": "a", "label": "pos"}])
    await sinks[1].write([{"id": "b", "label": "neg", "extra": 1}])
    await sinks[2].write([{"id": "c", "label": "neu", "extra": 2}])
    await sinks[0].write([{"id": "d", "label": "pos", "extra": 3}])
    for sink in sinks:
        await sink.commit()
    assert query(tmp_path / "out.db", "SELECT id, label, extra FROM scores ORDER BY id") == [
        ("a", "pos", None), ("b", "neg", 1), ("c", "neu", 2), ("d", "pos", 3)]
