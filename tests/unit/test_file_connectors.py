"""CSV, JSONL and JSON sources and sinks on real files: streaming, bad rows, atomic writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.connectors.base import Sink, Source, row_hash
from core.connectors.files import RAW_LIMIT, CsvSink, CsvSource, JsonlSink, JsonlSource, JsonSink, JsonSource
from core.connectors.registry import open_sink, open_source
from core.errors import ConnectorError, LoadError
from core.records import Record
from core.spec import LoadedSpec, load_spec

HOSTILE = [
    {"id": "1", "text": 'She said "hi", then left', "note": "comma, inside"},
    {"id": "2", "text": "line one\nline two\r\nline three", "note": ""},
    {"id": "3", "text": "ünïcödé — 日本語 — emoji 🎉 — עברית", "note": "{{ 7*7 }}"},
    {"id": "4", "text": "", "note": "{% for x in y %}not a template{% endfor %}"},
    {"id": "5", "text": "x" * 20_000, "note": "'; DROP TABLE reviews; --"},
    {"id": "6", "text": '""', "note": "\t tab and trailing space "},
]


def make_spec(folder: Path, source: str, destination: str = "jsonl://out/results.jsonl", *,
              extract: dict[str, Any] | None = None, load: dict[str, Any] | None = None) -> LoadedSpec:
    """A real pipeline file (with a real prompt) around the connector under test."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.j2").write_text("Classify: {{ input.text }}\n", encoding="utf-8")
    spec = {
        "name": "connector_test",
        "extract": {"source": source, **(extract or {})},
        "transform": {"prompt": "prompt.j2", "provider": "openai", "model": "gpt-4o-mini"},
        "load": {"destination": destination, **(load or {})},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return load_spec(path)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


async def read_all(source: Source, limit: int | None = None) -> list[Record]:
    records: list[Record] = []
    async for batch in source.batches(limit):
        records.extend(batch)
    return records


async def write_rows(sink: Sink, batches: list[list[dict[str, Any]]], run_id: str = "run1") -> None:
    await sink.open(run_id)
    for batch in batches:
        await sink.write(batch)
    await sink.commit()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".loom-" in p.name)


# ---------------------------------------------------------------- sources


async def test_hostile_csv_round_trips_through_csv_and_jsonl(tmp_path: Path) -> None:
    write_csv(tmp_path / "hostile.csv", HOSTILE)
    loaded = make_spec(tmp_path, "csv://hostile.csv", "csv://out/copy.csv", extract={"id_field": "id"})
    source = open_source(loaded)
    assert isinstance(source, CsvSource)
    records = await read_all(source)
    assert [r.data for r in records] == HOSTILE
    assert [r.id for r in records] == [row["id"] for row in HOSTILE]
    assert all(r.extract_error is None for r in records)
    assert records[1].origin == "hostile.csv:3"  # it spans lines 3-5: the next starts at 6
    assert records[2].origin == "hostile.csv:6"

    sink = open_sink(loaded)
    assert isinstance(sink, CsvSink)
    await write_rows(sink, [[r.data for r in records[:3]], [r.data for r in records[3:]]])
    assert read_csv(tmp_path / "out" / "copy.csv") == HOSTILE

    again = make_spec(tmp_path / "again", f"csv://{tmp_path / 'out' / 'copy.csv'}",
                      "jsonl://copy.jsonl")
    reread = await read_all(open_source(again))
    assert [r.data for r in reread] == HOSTILE

    jsonl_sink = open_sink(again)
    await write_rows(jsonl_sink, [[r.data for r in reread]])
    jsonl_path = tmp_path / "again" / "copy.jsonl"
    assert read_jsonl(jsonl_path) == HOSTILE
    assert "日本語" in jsonl_path.read_text(encoding="utf-8")  # ensure_ascii=False

    from_jsonl = make_spec(tmp_path / "third", f"jsonl://{jsonl_path}")
    assert [r.data for r in await read_all(open_source(from_jsonl))] == HOSTILE


async def test_a_utf8_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfid,text\r\n1,caf\xc3\xa9\r\n")
    loaded = make_spec(tmp_path, "csv://bom.csv", extract={"id_field": "id"})
    records = await read_all(open_source(loaded))
    assert [r.data for r in records] == [{"id": "1", "text": "café"}]
    assert records[0].id == "1"


async def test_bad_csv_rows_are_extract_errors_and_the_file_keeps_streaming(tmp_path: Path) -> None:
    lines = [
        b"id,text",
        b"1,fine",
        b'2,"stray"quote',           # malformed quoting
        b"3,nul\x00byte",             # a NUL byte
        b"4,too,many",                # field count
        b"5",                         # too few
        b"6,caf\xe9 latin-1",        # invalid UTF-8
        b"",                          # a blank line is skipped
        b'7,"multi\nline"',
        b"8,last",
    ]
    (tmp_path / "bad.csv").write_bytes(b"\n".join(lines) + b"\n")
    loaded = make_spec(tmp_path, "csv://bad.csv", extract={"id_field": "id", "batch_size": 2})
    records = await read_all(open_source(loaded))
    by_origin = {r.origin: r for r in records}
    assert [r.origin for r in records] == [f"bad.csv:{n}" for n in (2, 3, 4, 5, 6, 7, 9, 11)]

    assert by_origin["bad.csv:2"].data == {"id": "1", "text": "fine"}
    assert by_origin["bad.csv:3"].extract_error.startswith("malformed CSV row at line 3")
    assert by_origin["bad.csv:3"].data == {"_raw": '2,"stray"quote\n'}
    assert "NUL byte" in by_origin["bad.csv:4"].extract_error
    assert "the row has 3 fields, the header has 2" in by_origin["bad.csv:5"].extract_error
    assert by_origin["bad.csv:5"].data == {"_raw": "4,too,many\n"}
    assert "the row has 1 fields" in by_origin["bad.csv:6"].extract_error
    invalid = by_origin["bad.csv:7"]
    assert invalid.extract_error == "invalid UTF-8 in column 'text'"
    assert invalid.data == {"id": "6", "text": "caf\ufffd latin-1"}
    invalid.data["text"].encode("utf-8")  # made safe: no surrogates escape the source
    assert by_origin["bad.csv:9"].data == {"id": "7", "text": "multi\nline"}
    assert by_origin["bad.csv:11"].data == {"id": "8", "text": "last"}
    good = [r for r in records if r.extract_error is None]
    assert [r.id for r in good] == ["1", "7", "8"]
    # an unreadable row still gets a stable id, distinct from its neighbours'
    bad_ids = [r.id for r in records if r.extract_error]
    assert len(set(bad_ids)) == len(bad_ids)


async def test_a_csv_with_a_duplicated_header_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("id,text,text\n1,a,b\n", encoding="utf-8")
    loaded = make_spec(tmp_path, "csv://dup.csv")
    with pytest.raises(ConnectorError, match="column 'text' appears twice"):
        await read_all(open_source(loaded))


async def test_jsonl_bad_lines_are_extract_errors(tmp_path: Path) -> None:
    huge = "{" + '"x": "' + "y" * (RAW_LIMIT * 2)  # broken and far bigger than the raw limit
    text = "\n".join([
        '{"id": 1, "text": "ok"}',
        "",
        '{"id": 2, "text": ',
        "[1, 2, 3]",
        "   ",
        huge,
        '{"id": 3, "text": "after the damage"}',
    ]) + "\n"
    (tmp_path / "rows.jsonl").write_text(text, encoding="utf-8")
    loaded = make_spec(tmp_path, "jsonl://rows.jsonl")
    source = open_source(loaded)
    assert isinstance(source, JsonlSource)
    records = await read_all(source)
    assert [r.origin for r in records] == ["rows.jsonl:1", "rows.jsonl:3", "rows.jsonl:4",
                                          "rows.jsonl:6", "rows.jsonl:7"]
    assert records[0].data == {"id": 1, "text": "ok"}
    assert records[1].extract_error.startswith("line 3: invalid JSON")
    assert records[1].data == {"_raw": '{"id": 2, "text":'}
    assert records[2].extract_error == "line 4: not a JSON object (got array)"
    assert records[2].data == {"_raw": "[1, 2, 3]"}
    assert len(records[3].data["_raw"]) == RAW_LIMIT
    assert records[4].data == {"id": 3, "text": "after the damage"}
    assert records[4].extract_error is None


async def test_jsonl_with_invalid_utf8_is_an_extract_error(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_bytes(b'{"t": "caf\xe9"}\n{"t": "ok"}\n')
    records = await read_all(open_source(make_spec(tmp_path, "jsonl://rows.jsonl")))
    assert records[0].extract_error == "line 1: invalid UTF-8"
    assert records[0].data == {"_raw": '{"t": "caf\ufffd"}'}
    assert records[1].data == {"t": "ok"}


async def test_json_array_streams_and_flags_non_objects(tmp_path: Path) -> None:
    items: list[Any] = [{"id": i, "score": i / 2, "tags": ["a", {"b": None}]} for i in range(250)]
    items.insert(100, "a string")
    (tmp_path / "rows.json").write_bytes(b"\xef\xbb\xbf  \n" + json.dumps(items).encode("utf-8"))
    loaded = make_spec(tmp_path, "json://rows.json", extract={"batch_size": 64})
    source = open_source(loaded)
    assert isinstance(source, JsonSource)
    assert await source.count_hint() is None
    batches = [batch async for batch in source.batches()]
    assert [len(b) for b in batches] == [64, 64, 64, 59]
    records = [r for batch in batches for r in batch]
    assert records[0].data == {"id": 0, "score": 0.0, "tags": ["a", {"b": None}]}
    assert isinstance(records[3].data["score"], float)  # not Decimal
    assert records[100].extract_error == "element 100 is not a JSON object (got string)"
    assert records[100].data == {"_raw": '"a string"'}
    assert records[100].origin == "rows.json[100]"
    assert [r.data["id"] for r in records if r.extract_error is None] == list(range(250))


async def test_a_truncated_json_array_ends_with_one_extract_error(tmp_path: Path) -> None:
    (tmp_path / "cut.json").write_text('[{"id": 1}, {"id": 2}, {"id": 3, "te', encoding="utf-8")
    records = await read_all(open_source(make_spec(tmp_path, "json://cut.json")))
    assert [r.data for r in records[:2]] == [{"id": 1}, {"id": 2}]
    assert len(records) == 3
    assert records[2].extract_error.startswith("invalid JSON at element 2")
    assert "\n" not in records[2].extract_error


@pytest.mark.parametrize("content, found", [('{"a": 1}', "an object"), ("", "an empty file"),
                                            ("42", "'4'")])
async def test_a_json_file_that_is_not_an_array_is_a_connector_error(tmp_path: Path, content: str,
                                                                     found: str) -> None:
    (tmp_path / "x.json").write_text(content, encoding="utf-8")
    with pytest.raises(ConnectorError) as caught:
        await read_all(open_source(make_spec(tmp_path, "json://x.json")))
    message = str(caught.value)
    assert "x.json" in message and f"found {found}" in message and "\n" not in message


@pytest.mark.parametrize("scheme", ["csv", "jsonl", "json"])
async def test_a_missing_file_is_one_line_naming_it(tmp_path: Path, scheme: str) -> None:
    (tmp_path / f"data.{scheme}").write_text("", encoding="utf-8")
    loaded = make_spec(tmp_path, f"{scheme}://data.{scheme}")
    (tmp_path / f"data.{scheme}").unlink()  # gone between validation and the run
    source = open_source(loaded)
    with pytest.raises(ConnectorError) as caught:
        await read_all(source)
    assert str(caught.value) == f"{scheme} source {tmp_path / f'data.{scheme}'}: cannot read: no such file"
    if scheme != "json":
        with pytest.raises(ConnectorError, match="no such file"):
            await source.count_hint()


async def test_batches_honour_batch_size_and_limit(tmp_path: Path) -> None:
    write_csv(tmp_path / "rows.csv", [{"id": str(i), "text": f"t{i}"} for i in range(7)])
    loaded = make_spec(tmp_path, "csv://rows.csv", extract={"batch_size": 3, "id_field": "id"})
    source = open_source(loaded)
    assert [len(b) async for b in source.batches()] == [3, 3, 1]
    assert [len(b) async for b in source.batches(limit=5)] == [3, 2]
    assert [len(b) async for b in source.batches(limit=0)] == []
    limited = make_spec(tmp_path / "limited", f"csv://{tmp_path / 'rows.csv'}",
                        extract={"batch_size": 4, "limit": 6})
    records = [r async for b in open_source(limited).batches() for r in b]
    assert [r.ordinal for r in records] == list(range(6))


async def test_many_rows_stream_across_read_chunks(tmp_path: Path) -> None:
    count = 5_000
    with (tmp_path / "big.jsonl").open("w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": i, "text": f"row {i}"}) + "\n")
    source = open_source(make_spec(tmp_path, "jsonl://big.jsonl", extract={"batch_size": 500}))
    assert await source.count_hint() == count
    sizes, seen = [], 0
    async for batch in source.batches():
        sizes.append(len(batch))
        assert [r.data["id"] for r in batch] == list(range(seen, seen + len(batch)))
        seen += len(batch)
    assert sizes == [500] * 10


async def test_count_hint_counts_lines(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id\n1\n2\n3", encoding="utf-8")  # no final newline
    assert await open_source(make_spec(tmp_path, "csv://a.csv")).count_hint() == 3
    (tmp_path / "b.jsonl").write_text('{"a":1}\n{"a":2}\n', encoding="utf-8")
    assert await open_source(make_spec(tmp_path / "b", f"jsonl://{tmp_path / 'b.jsonl'}")).count_hint() == 2


async def test_ids_come_from_id_field_else_a_stable_row_hash(tmp_path: Path) -> None:
    write_csv(tmp_path / "rows.csv", [{"id": "a1", "text": "x"}, {"id": "", "text": "y"}])
    with_id = open_source(make_spec(tmp_path, "csv://rows.csv", extract={"id_field": "id"}))
    records = await read_all(with_id)
    assert records[0].id == "a1"
    assert records[1].extract_error == "id_field 'id' is missing or empty"

    hashed = open_source(make_spec(tmp_path / "h", f"csv://{tmp_path / 'rows.csv'}"))
    first = [r.id for r in await read_all(hashed)]
    second = [r.id for r in await read_all(hashed)]
    assert first == second == [row_hash({"id": "a1", "text": "x"}), row_hash({"id": "", "text": "y"})]


async def test_a_csv_in_another_encoding(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("id,text\n1,café\n".encode("latin-1"))
    loaded = make_spec(tmp_path, "csv://latin.csv", extract={"encoding": "latin-1"})
    assert [r.data for r in await read_all(open_source(loaded))] == [{"id": "1", "text": "café"}]


# ---------------------------------------------------------------- sinks


@pytest.mark.parametrize("mode", ["replace", "append"])
@pytest.mark.parametrize("scheme", ["jsonl", "json", "csv"])
async def test_the_destination_changes_only_at_commit(tmp_path: Path, scheme: str, mode: str) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    loaded = make_spec(tmp_path, "csv://seed.csv", f"{scheme}://out/deep/results.{scheme}",
                       load={"mode": mode})
    destination = tmp_path / "out" / "deep" / f"results.{scheme}"
    sink = open_sink(loaded)
    await sink.open("r1")
    await sink.write([{"record_id": "1", "label": "positive"}])
    assert not destination.exists()  # written, not committed: nothing to see yet
    await sink.commit()
    assert destination.exists()
    assert leftovers(destination.parent) == []
    committed = destination.read_bytes()

    second = open_sink(loaded)
    await second.open("r2")
    await second.write([{"record_id": "2", "label": "negative"}])
    assert destination.read_bytes() == committed
    assert leftovers(destination.parent) != []
    await second.abort()
    assert destination.read_bytes() == committed  # abort: as it was
    assert leftovers(destination.parent) == []


async def test_jsonl_append_keeps_old_rows_and_replace_drops_them(tmp_path: Path) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text('{"record_id": "old"}', encoding="utf-8")  # no final newline
    append = make_spec(tmp_path, "csv://seed.csv", "jsonl://out.jsonl", load={"mode": "append"})
    await write_rows(open_sink(append), [[{"record_id": "a"}], [{"record_id": "b", "n": 1.5}]])
    assert read_jsonl(out) == [{"record_id": "old"}, {"record_id": "a"}, {"record_id": "b", "n": 1.5}]

    replace = make_spec(tmp_path / "r", f"csv://{tmp_path / 'seed.csv'}", f"jsonl://{out}",
                        load={"mode": "replace"})
    await write_rows(open_sink(replace), [[{"record_id": "only"}]])
    assert read_jsonl(out) == [{"record_id": "only"}]


async def test_json_sink_writes_an_array_and_appends_without_loading_it(tmp_path: Path) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    loaded = make_spec(tmp_path, "csv://seed.csv", "json://out.json")
    out = tmp_path / "out.json"
    await write_rows(open_sink(loaded), [[{"id": 1, "when": Path("/x")}], [{"id": 2, "nested": {"a": [1]}}]])
    assert json.loads(out.read_text(encoding="utf-8")) == [{"id": 1, "when": "/x"},
                                                          {"id": 2, "nested": {"a": [1]}}]
    await write_rows(open_sink(loaded), [[{"id": 3}]], run_id="r2")
    assert [item["id"] for item in json.loads(out.read_text(encoding="utf-8"))] == [1, 2, 3]

    out.write_text("[ \n ]\n", encoding="utf-8")  # an empty array gets no leading comma
    await write_rows(open_sink(loaded), [[{"id": 9}]], run_id="r3")
    assert json.loads(out.read_text(encoding="utf-8")) == [{"id": 9}]

    await write_rows(open_sink(loaded), [], run_id="r4")  # no rows: unchanged content
    assert json.loads(out.read_text(encoding="utf-8")) == [{"id": 9}]

    out.write_text('{"not": "an array"}', encoding="utf-8")
    with pytest.raises(ConnectorError, match="cannot append: the file is not a JSON array"):
        await open_sink(loaded).open("r5")
    assert leftovers(tmp_path) == []


async def test_json_sink_replace_with_no_rows_writes_an_empty_array(tmp_path: Path) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    (tmp_path / "out.json").write_text('[{"id": 1}]', encoding="utf-8")
    loaded = make_spec(tmp_path, "csv://seed.csv", "json://out.json", load={"mode": "replace"})
    await write_rows(open_sink(loaded), [])
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == []


async def test_csv_sink_header_is_the_union_of_keys(tmp_path: Path) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    loaded = make_spec(tmp_path, "csv://seed.csv", "csv://out.csv")
    await write_rows(open_sink(loaded), [
        [{"record_id": "1", "label": "pos"}],
        [{"record_id": "2", "score": 0.5, "tags": ["a", "b"], "meta": {"k": "v"}, "ok": True,
          "label": None}],
    ])
    out = tmp_path / "out.csv"
    assert out.read_text(encoding="utf-8").splitlines()[0] == "record_id,label,score,tags,meta,ok"
    assert read_csv(out) == [
        {"record_id": "1", "label": "pos", "score": "", "tags": "", "meta": "", "ok": ""},
        {"record_id": "2", "label": "", "score": "0.5", "tags": '["a", "b"]', "meta": '{"k": "v"}',
         "ok": "true"},
    ]

    # appending with a new column: the existing header comes first, old rows are padded
    await write_rows(open_sink(loaded), [[{"record_id": "3", "extra": "é", "label": "neg"}]], "r2")
    assert out.read_text(encoding="utf-8").splitlines()[0] == "record_id,label,score,tags,meta,ok,extra"
    rows = read_csv(out)
    assert [r["record_id"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["extra"] == "" and rows[2] == {"record_id": "3", "label": "neg", "score": "",
                                                  "tags": "", "meta": "", "ok": "", "extra": "é"}
    # and the result is a well-formed CSV for our own source
    again = make_spec(tmp_path / "again", f"csv://{out}")
    assert all(r.extract_error is None for r in await read_all(open_source(again)))

    # appending with the same columns copies the old rows byte for byte
    before = out.read_bytes()
    await write_rows(open_sink(loaded), [[{"record_id": "4"}]], "r3")
    assert out.read_bytes().startswith(before)
    assert read_csv(out)[-1]["record_id"] == "4"
    assert leftovers(tmp_path) == []


async def test_upsert_on_a_file_is_refused_at_open(tmp_path: Path) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    loaded = make_spec(tmp_path, "csv://seed.csv", "jsonl://out.jsonl",
                       load={"mode": "upsert", "key": "id"})
    with pytest.raises(ConnectorError, match="mode upsert needs a sqlite or postgres destination"):
        await open_sink(loaded).open("r1")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("scheme", ["jsonl", "json", "csv"])
async def test_a_refused_batch_is_a_load_error_and_the_sink_goes_on(tmp_path: Path, scheme: str) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    loaded = make_spec(tmp_path, "csv://seed.csv", f"{scheme}://out.{scheme}")
    sink = open_sink(loaded)
    await sink.open("r1")
    await sink.write([{"record_id": "1"}])
    with pytest.raises(LoadError, match="not valid Unicode"):
        await sink.write([{"record_id": "2"}, {"record_id": "bad \udce9 text"}])
    await sink.write([{"record_id": "3"}])
    await sink.commit()
    out = tmp_path / f"out.{scheme}"
    if scheme == "jsonl":
        ids = [r["record_id"] for r in read_jsonl(out)]
    elif scheme == "json":
        ids = [r["record_id"] for r in json.loads(out.read_text(encoding="utf-8"))]
    else:
        ids = [r["record_id"] for r in read_csv(out)]
    assert ids == ["1", "3"]  # the refused batch left nothing behind


async def test_file_sinks_are_the_registered_classes(tmp_path: Path) -> None:
    (tmp_path / "seed.csv").write_text("id\n1\n", encoding="utf-8")
    for scheme, cls in (("jsonl", JsonlSink), ("json", JsonSink), ("csv", CsvSink)):
        loaded = make_spec(tmp_path / scheme, f"csv://{tmp_path / 'seed.csv'}", f"{scheme}://o.{scheme}")
        assert type(open_sink(loaded)) is cls
