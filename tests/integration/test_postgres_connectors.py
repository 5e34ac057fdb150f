"""The PostgreSQL source and sink against a real server started by the tests."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pytest

import datetime as dt

from core.connectors.postgres import array_literal, bind_value
from core.connectors.registry import open_sink, open_source, redact_uri
from core.errors import ConnectorError, LoadError, PipelineError
from tests.pipelines import HOSTILE_TEXTS, connector_spec, read_records
from tests.support.postgres import ROLE_PASSWORD, free_port


def source_spec(tmp_path: Path, db, **extract):
    return connector_spec(tmp_path / "p", db.dsn, extract=extract)


def sink_spec(tmp_path: Path, db, table: str = "Review Scores", **load):
    return connector_spec(tmp_path / "p", "jsonl://in.jsonl", db.dsn,
                          load={"table": table, **load}, extract={"id_field": "id"})


async def write_batches(sink, batches, run_id: str = "run-1") -> None:
    await sink.open(run_id)
    for batch in batches:
        await sink.write(batch)
    await sink.commit()


def no_password(text: str) -> None:
    assert ROLE_PASSWORD not in text
    assert "\n" not in text


# ---------------------------------------------------------------- source


async def test_a_table_streams_every_row_with_its_types(tmp_path, pg_database):
    pg_database.sql("CREATE TABLE reviews (id int PRIMARY KEY, text text, meta jsonb, "
                    "price numeric(6,2), at timestamptz, blob bytea, tags text[])")
    pg_database.sql("INSERT INTO reviews SELECT g, 'review ' || g, jsonb_build_object('n', g), "
                    "g * 1.5, '2025-01-02T03:04:05Z', '\\x0102', ARRAY['a', 'b'] "
                    "FROM generate_series(1, 250) AS g")
    records = await read_records(open_source(source_spec(tmp_path, pg_database, table="reviews",
                                                         id_field="id", batch_size=100)))
    assert [r.id for r in records] == [str(i) for i in range(1, 251)]
    first = records[0]
    assert first.data["meta"] == {"n": 1}  # jsonb arrives as a value, not as its text
    assert first.data["price"] == Decimal("1.50")
    assert first.data["at"].isoformat() == "2025-01-02T03:04:05+00:00"
    assert first.data["blob"] == "AQI="  # bytes as base64 text, like the sqlite source
    assert first.data["tags"] == ["a", "b"]
    assert first.origin.endswith(":reviews:1") and first.extract_error is None


async def test_query_values_are_bound_never_pasted(tmp_path, pg_database):
    pg_database.sql("CREATE TABLE reviews (id int, text text, created timestamptz)")
    pg_database.sql("INSERT INTO reviews SELECT g, 'r' || g, "
                    "'2024-01-01'::timestamptz + g * interval '1 day' FROM generate_series(1, 40) g")
    hostile = "'; DROP TABLE reviews; --"
    loaded = connector_spec(
        tmp_path / "p", pg_database.dsn,
        extract={"query": "SELECT id, text FROM reviews WHERE created > {{ params.since }} "
                          "AND id >= {{ params.first }} OR text = {{ params.text }} ORDER BY id"},
        params={"since": "2024-01-31", "first": "35", "text": hostile})
    records = await read_records(open_source(loaded))
    # the date string went to a timestamptz parameter, "35" to an integer one
    assert [r.data["id"] for r in records] == [35, 36, 37, 38, 39, 40]
    assert pg_database.rows("SELECT count(*) FROM reviews") == [["40"]]  # the table is intact


async def test_the_cursor_streams_rather_than_reading_everything(tmp_path, pg_database):
    # Row 1000 divides by zero. A server-side cursor that reads only what is asked for never
    # gets there; a client that fetched the whole result first would fail.
    loaded = connector_spec(tmp_path / "p", pg_database.dsn, extract={
        "query": "SELECT g AS id, 1 / (g - 1000) AS x FROM generate_series(1, 100000) AS g",
        "batch_size": 50})
    records = await read_records(open_source(loaded), limit=120)
    assert len(records) == 120
    with pytest.raises(ConnectorError, match="division by zero"):
        await read_records(open_source(loaded))


async def test_extracting_can_never_modify_the_source(tmp_path, pg_database):
    pg_database.sql("CREATE TABLE reviews (id int)")
    pg_database.sql("INSERT INTO reviews VALUES (1), (2)")
    loaded = connector_spec(tmp_path / "p", pg_database.dsn,
                            extract={"query": "DELETE FROM reviews RETURNING id"})
    with pytest.raises(ConnectorError, match="read-only transaction"):
        await read_records(open_source(loaded))
    assert pg_database.rows("SELECT count(*) FROM reviews") == [["2"]]


async def test_source_errors_are_one_line_naming_the_key_without_the_password(tmp_path, pg_database):
    with pytest.raises(ConnectorError) as missing:
        await read_records(open_source(source_spec(tmp_path, pg_database, table="nope")))
    assert str(missing.value).startswith("extract.table: relation \"nope\" does not exist")
    no_password(str(missing.value))

    pg_database.sql("CREATE TABLE a (id int)")
    with pytest.raises(ConnectorError, match="column 'id' appears twice"):
        await read_records(open_source(source_spec(
            tmp_path, pg_database, query="SELECT a.id, b.id FROM a, a AS b")))

    wrong = pg_database.dsn.replace(ROLE_PASSWORD, "not-the-password")
    with pytest.raises(ConnectorError) as auth:
        await read_records(open_source(connector_spec(tmp_path / "q", wrong,
                                                      extract={"table": "a"})))
    assert 'password authentication failed for user "loom"' in str(auth.value)
    assert "not-the-password" not in str(auth.value) and "***" in str(auth.value)

    closed = f"postgres://loom:{ROLE_PASSWORD}@127.0.0.1:{free_port()}/x"
    with pytest.raises(ConnectorError, match="cannot connect: connection refused") as refused:
        await read_records(open_source(connector_spec(tmp_path / "r", closed,
                                                      extract={"table": "a"})))
    no_password(str(refused.value))


def test_a_postgres_source_needs_a_query_or_a_table(tmp_path):
    with pytest.raises(PipelineError, match="a postgres source needs query: or table:"):
        connector_spec(tmp_path, "postgres://loom:${PG_PASSWORD}@db.example/x")


def test_remote_uris_are_not_looked_for_on_disk_and_keep_placeholders(tmp_path):
    loaded = connector_spec(tmp_path, "postgres://loom:${PG_PASSWORD}@db.example/x",
                            "postgresql://${PG_USER}:${PG_PASSWORD}@db.example/y",
                            extract={"table": "reviews"}, load={"table": "out"})
    assert loaded.spec.extract.source == "postgres://loom:${PG_PASSWORD}@db.example/x"
    assert loaded.raw["load"]["destination"].endswith("@db.example/y")


# ---------------------------------------------------------------- sink


async def test_hostile_text_round_trips_into_a_quoted_table_name(tmp_path, pg_database):
    rows = [{"id": f"h{i}", "text": text, "nested": {"text": text, "n": i}}
            for i, text in enumerate(HOSTILE_TEXTS)]
    await write_batches(open_sink(sink_spec(tmp_path, pg_database)), [rows[:4], rows[4:]])
    back = {r.id: r.data for r in await read_records(open_source(source_spec(
        tmp_path / "read", pg_database, table="Review Scores", id_field="id")))}
    for i, text in enumerate(HOSTILE_TEXTS):
        assert back[f"h{i}"]["text"] == text
        assert back[f"h{i}"]["nested"] == {"text": text, "n": i}
    types = dict(pg_database.rows(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'Review Scores'"))
    assert types == {"id": "text", "text": "text", "nested": "jsonb"}


async def test_a_schema_qualified_table_with_spaces_and_capitals(tmp_path, pg_database):
    pg_database.sql('CREATE SCHEMA "Analytics"')
    loaded = sink_spec(tmp_path, pg_database, table="Analytics.Review Scores")
    await write_batches(open_sink(loaded), [[{"id": "1", "Label": "positive"}]])
    assert pg_database.rows('SELECT id, "Label" FROM "Analytics"."Review Scores"') == [["1", "positive"]]

    with pytest.raises(ConnectorError, match="schema 'nowhere' does not exist"):
        await open_sink(sink_spec(tmp_path / "b", pg_database, table="nowhere.t")).open("r")


async def test_upsert_twice_leaves_no_duplicates_and_the_latest_values(tmp_path, pg_database):
    loaded = sink_spec(tmp_path, pg_database, mode="upsert", key="id")
    first = [{"id": f"r{i}", "label": "old", "score": i} for i in range(30)]
    await write_batches(open_sink(loaded), [first[:10], first[10:]], "run-1")
    again = [{"id": f"r{i}", "label": "new", "score": i * 10} for i in range(20, 40)]
    # the same key twice in one batch: the later row wins, nothing fails
    await write_batches(open_sink(loaded), [again, [{"id": "r39", "label": "last", "score": -1}]],
                        "run-2")
    rows = pg_database.rows('SELECT count(*), count(DISTINCT id) FROM "Review Scores"')
    assert rows == [["40", "40"]]
    values = dict((r[0], (r[1], r[2])) for r in pg_database.rows(
        'SELECT id, label, score FROM "Review Scores"'))
    assert values["r5"] == ("old", "5") and values["r25"] == ("new", "250")
    assert values["r39"] == ("last", "-1")


async def test_upsert_into_an_existing_table_adds_the_unique_key(tmp_path, pg_database):
    pg_database.sql('CREATE TABLE "Review Scores" (label text)')
    loaded = sink_spec(tmp_path, pg_database, mode="upsert", key="id")
    for run in ("a", "b"):
        await write_batches(open_sink(loaded), [[{"id": "1", "label": run}]], run)
    assert pg_database.rows('SELECT id, label FROM "Review Scores"') == [["1", "b"]]

    pg_database.sql('CREATE TABLE dupes (id text, label text)')
    pg_database.sql("INSERT INTO dupes VALUES ('1', 'a'), ('1', 'b')")
    with pytest.raises(ConnectorError, match="already holds rows with the same key"):
        await open_sink(sink_spec(tmp_path / "d", pg_database, table="dupes", mode="upsert",
                                  key="id")).open("r")


async def test_values_are_cast_by_the_columns_type_and_a_bad_batch_fails_alone(tmp_path, pg_database):
    pg_database.sql('CREATE TABLE "Review Scores" (id text, stars bigint, ok boolean, '
                    'at timestamptz, extra jsonb, tags text[])')
    sink = open_sink(sink_spec(tmp_path, pg_database))
    await sink.open("run-1")
    # text from a CSV: PostgreSQL reads "4" as a bigint and "yes" as a boolean
    await sink.write([{"id": "1", "stars": "4", "ok": "yes", "at": "2025-01-02T03:04:05+01:00",
                       "extra": "just text", "tags": ["a", 'b"c', None]}])
    with pytest.raises(LoadError) as bad:
        await sink.write([{"id": "2", "stars": "four"}])
    assert 'invalid input syntax for type bigint: "four"' in str(bad.value)
    assert "table Review Scores" in str(bad.value)
    no_password(str(bad.value))
    await sink.write([{"id": "3", "stars": 5, "ok": False, "new_column": 1.25}])
    await sink.commit()
    rows = pg_database.rows('SELECT id, stars, ok, extract(epoch FROM at)::bigint, extra #>> \'{}\', '
                            'tags::text, new_column FROM "Review Scores" ORDER BY id')
    assert rows == [["1", "4", "t", "1735783445", "just text", '{a,"b\\"c",NULL}', ""],
                    ["3", "5", "f", "", "", "", "1.25"]]


async def test_declared_columns_shape_a_new_table(tmp_path, pg_database):
    loaded = sink_spec(tmp_path, pg_database, columns={"score": "numeric(4,3)",
                                                       "label": "varchar(20)",
                                                       "never_written": "date"})
    await write_batches(open_sink(loaded), [[{"id": "1", "score": "0.875", "label": "positive",
                                              "other": {"a": 1}}]])
    types = dict(pg_database.rows(
        "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
        "JOIN pg_attribute a ON a.attname = c.column_name AND a.attrelid = '\"Review Scores\"'::regclass "
        "WHERE table_name = 'Review Scores'"))
    assert types == {"score": "numeric(4,3)", "label": "character varying(20)",
                     "never_written": "date", "id": "text", "other": "jsonb"}


def test_declared_column_types_cannot_smuggle_sql(tmp_path):
    with pytest.raises(PipelineError, match="is not a SQL type"):
        connector_spec(tmp_path, "jsonl://in.jsonl", "postgres://u:${P}@h/db",
                       load={"table": "t", "columns": {"x": "text); DROP TABLE t; --"}})
    with pytest.raises(PipelineError, match="load.columns: only for postgres destinations"):
        connector_spec(tmp_path, "jsonl://in.jsonl", "sqlite://out.db",
                       load={"table": "t", "columns": {"x": "text"}})


async def test_replace_swaps_in_one_transaction_and_abort_leaves_the_table(tmp_path, pg_database):
    pg_database.sql('CREATE TABLE "Review Scores" (serial_id serial, id text, label text)')
    pg_database.sql("""INSERT INTO "Review Scores" (id, label) VALUES ('old', 'x')""")
    loaded = sink_spec(tmp_path, pg_database, mode="replace")

    sink = open_sink(loaded)
    await sink.open("run-abort")
    await sink.write([{"id": "new", "label": "y"}])
    assert pg_database.rows('SELECT id FROM "Review Scores"') == [["old"]]  # not yet visible
    await sink.abort()
    assert pg_database.rows('SELECT id FROM "Review Scores"') == [["old"]]
    assert pg_database.rows("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'loom_replace_%'") == [["0"]]

    await write_batches(open_sink(loaded), [[{"id": "a", "label": "1"}], [{"id": "b", "label": "2",
                                                                            "added": True}]],
                        "run-ok")
    rows = pg_database.rows('SELECT id, label, added, serial_id IS NOT NULL FROM "Review Scores" ORDER BY id')
    assert rows == [["a", "1", "", "t"], ["b", "2", "t", "t"]]
    assert pg_database.rows("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'loom_replace_%'") == [["0"]]

    await write_batches(open_sink(loaded), [], "run-empty")  # nothing passed: the table empties
    assert pg_database.rows('SELECT count(*) FROM "Review Scores"') == [["0"]]


async def test_replace_creates_a_missing_table_at_commit(tmp_path, pg_database):
    sink = open_sink(sink_spec(tmp_path, pg_database, table="fresh", mode="replace"))
    await sink.open("run-1")
    await sink.write([{"id": "1", "v": {"deep": [1, 2]}}])
    assert pg_database.rows("SELECT to_regclass('fresh') IS NULL") == [["t"]]
    await sink.commit()
    assert pg_database.rows("SELECT id, v::text FROM fresh") == [["1", '{"deep": [1, 2]}']]


async def test_sink_errors_name_the_destination_without_the_password(tmp_path, pg_database):
    pg_database.sql("CREATE VIEW v AS SELECT 1 AS id")
    with pytest.raises(ConnectorError, match="is a view, not a table"):
        await open_sink(sink_spec(tmp_path, pg_database, table="v")).open("r")

    wrong = connector_spec(tmp_path / "w", "jsonl://in.jsonl",
                           pg_database.dsn.replace(ROLE_PASSWORD, "wrong-password"),
                           load={"table": "t"})
    with pytest.raises(ConnectorError) as auth:
        await open_sink(wrong).open("r")
    assert "password authentication failed" in str(auth.value)
    assert "wrong-password" not in str(auth.value) and "table t" in str(auth.value)

    sink = open_sink(sink_spec(tmp_path / "k", pg_database, table="keyed", mode="upsert", key="id"))
    await sink.open("r")
    with pytest.raises(LoadError, match="a row has no value for key 'id'"):
        await sink.write([{"label": "no id"}])
    with pytest.raises(LoadError, match="invalid column name"):
        await sink.write([{"id": "1", "x" * 70: 1}])
    await sink.abort()


async def test_the_pool_is_sized_to_the_concurrency(tmp_path, pg_database):
    loaded = connector_spec(tmp_path / "p", "jsonl://in.jsonl", pg_database.dsn,
                            load={"table": "t"})
    loaded.spec.transform.concurrency = 6
    sink = open_sink(loaded)
    assert sink.pool_size == 6
    await sink.open("r")
    # concurrent writes share the pool and the table is created once
    await asyncio.gather(*(sink.write([{"id": str(i), "n": i}]) for i in range(12)))
    await sink.commit()
    assert pg_database.rows("SELECT count(*) FROM t") == [["12"]]


async def test_jsonb_outputs_keep_their_structure(tmp_path, pg_database):
    output = {"labels": ["a", "b"], "scores": {"x": 0.5}, "none": None, "flag": True}
    await write_batches(open_sink(sink_spec(tmp_path, pg_database, table="j")),
                        [[{"id": "1", "output": output}]])
    (value,) = pg_database.rows("SELECT output::text FROM j")[0]
    assert json.loads(value) == output


def test_query_parameters_take_the_type_postgres_asks_for():
    assert bind_value("42", "int8") == 42 and bind_value(True, "int4") == 1
    assert bind_value("2024-01-31", "timestamptz") == dt.datetime(2024, 1, 31, tzinfo=dt.timezone.utc)
    assert bind_value(dt.date(2024, 1, 31), "timestamp") == dt.datetime(2024, 1, 31)
    assert bind_value("2024-01-31", "date") == dt.date(2024, 1, 31)
    assert bind_value("1.10", "numeric") == Decimal("1.10")
    assert bind_value("yes", "bool") is True and bind_value(7, "text") == "7"
    with pytest.raises(ValueError):
        bind_value("soon", "timestamptz")


def test_array_literals_and_redacted_uris():
    assert array_literal(["a", 'b"c', "d\\e", None, [1, 2]]) == '{"a","b\\"c","d\\\\e",NULL,{"1","2"}}'
    assert redact_uri("postgres://loom:p@ss/w:rd@db:5432/x") == "postgres://loom:***@db:5432/x"
    assert redact_uri("postgres://loom@db/x") == "postgres://loom@db/x"
