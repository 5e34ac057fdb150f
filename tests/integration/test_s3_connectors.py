"""The S3 source and sink against the S3 API on 127.0.0.1 (moto's server), over real HTTP."""

from __future__ import annotations

import gc
import json
import tracemalloc
from pathlib import Path

import pytest

from core.connectors import object_lock
from core.connectors import s3 as s3_module
from core.connectors.registry import open_sink, open_source
from core.errors import ConnectorError, DestinationBusy, LoadError, PipelineError
from tests.pipelines import HOSTILE_TEXTS, connector_spec, read_records
from tests.support.s3 import S3ServerProcess


def put_jsonl(client, bucket: str, key: str, rows: list[dict]) -> None:
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    client.put_object(Bucket=bucket, Key=key, Body=body.encode("utf-8"))


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    paginator = client.get_paginator("list_objects_v2")
    return [item["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", ())]


def read_parts(client, bucket: str, prefix: str) -> list[dict]:
    rows = []
    for key in keys(client, bucket, prefix):
        if key.endswith(".jsonl"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
            rows += [json.loads(line) for line in body.splitlines() if line]
    return rows


# ---------------------------------------------------------------- source


async def test_every_object_under_the_prefix_in_key_order_across_pages(tmp_path, s3, monkeypatch):
    client = s3.client()
    client.create_bucket(Bucket="reviews")
    for n in range(3):
        put_jsonl(client, "reviews", f"in/2025/part-{n}.jsonl",
                  [{"id": f"{n}-{i:03d}", "text": f"review {n} {i}"} for i in range(100)])
    put_jsonl(client, "reviews", "other/ignored.jsonl", [{"id": "x"}])
    client.put_object(Bucket="reviews", Key="in/2025/_SUCCESS", Body=b"")
    client.put_object(Bucket="reviews", Key="in/2025/.keep", Body=b"")
    client.put_object(Bucket="reviews", Key="in/2025/folder/", Body=b"")
    monkeypatch.setattr(s3_module, "LIST_PAGE_SIZE", 2)  # several real list requests

    loaded = connector_spec(tmp_path, "s3://reviews/in/", extract={"id_field": "id",
                                                                   "batch_size": 64})
    records = await read_records(open_source(loaded))
    assert [r.id for r in records] == [f"{n}-{i:03d}" for n in range(3) for i in range(100)]
    assert records[0].origin == "in/2025/part-0.jsonl:1"
    assert records[-1].data == {"id": "2-099", "text": "review 2 99"}


async def test_csv_and_json_by_suffix_and_format_for_the_rest(tmp_path, s3):
    client = s3.client()
    client.create_bucket(Bucket="mixed")
    client.put_object(Bucket="mixed", Key="d/a.csv", Body='id,text\n1,"a, b"\n2,"say ""hi"""\n'.encode())
    client.put_object(Bucket="mixed", Key="d/b.json", Body=b'\xef\xbb\xbf [{"id": "3"}, {"id": "4"}]')
    client.put_object(Bucket="mixed", Key="d/c.ndjson", Body=b'{"id": "5"}\nnot json\n')
    records = await read_records(open_source(connector_spec(tmp_path, "s3://mixed/d/",
                                                            extract={"id_field": "id"})))
    assert [(r.id, r.extract_error) for r in records][:4] == [
        ("1", None), ("2", None), ("3", None), ("4", None)]
    assert records[0].data["text"] == "a, b" and records[1].data["text"] == 'say "hi"'
    assert records[4].id == "5" and "invalid JSON" in records[5].extract_error  # kept, not lost

    client.put_object(Bucket="mixed", Key="raw/export-1", Body=b'{"id": "9"}\n')
    with pytest.raises(ConnectorError, match="cannot tell the format from the name"):
        await read_records(open_source(connector_spec(tmp_path / "q", "s3://mixed/raw/")))
    records = await read_records(open_source(connector_spec(
        tmp_path / "r", "s3://mixed/raw/", extract={"format": "jsonl", "id_field": "id"})))
    assert [r.id for r in records] == ["9"]


async def test_a_large_object_is_streamed_not_read_whole(tmp_path, monkeypatch):
    # The server runs in its own process, so this process's memory is the client's alone.
    server = S3ServerProcess().start()
    try:
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        await _stream_a_large_object(tmp_path, server)
    finally:
        server.stop()


async def _stream_a_large_object(tmp_path: Path, server: S3ServerProcess) -> None:
    client = server.client()
    client.create_bucket(Bucket="big")
    line = json.dumps({"id": "0", "text": "y" * 1000}) + "\n"
    count = 24_000  # about 24 MB
    body = "".join(line.replace('"0"', f'"{i}"', 1) for i in range(count)).encode()
    client.put_object(Bucket="big", Key="all.jsonl", Body=body)
    size = len(body)
    del body
    gc.collect()

    source = open_source(connector_spec(tmp_path, "s3://big/", extract={"id_field": "id",
                                                                        "batch_size": 500}))
    seen = 0
    last = None
    try:
        async for batch in source.batches():
            if not seen:
                # The client is up (botocore's service model alone is ~10 MB): from here on,
                # memory must not grow with the object.
                tracemalloc.start()
            seen += len(batch)
            last = batch[-1]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await source.aclose()
    assert seen == count and last is not None and last.id == str(count - 1)
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte object"


async def test_source_errors_name_the_bucket(tmp_path, s3):
    with pytest.raises(ConnectorError, match="s3 source s3://missing-bucket/x/: cannot list: no such bucket"):
        await read_records(open_source(connector_spec(tmp_path, "s3://missing-bucket/x/")))
    with pytest.raises(PipelineError, match="an s3:// URI names a bucket"):
        connector_spec(tmp_path / "b", "s3:///prefix/")
    with pytest.raises(PipelineError, match="extract.format: only for s3:// sources"):
        connector_spec(tmp_path / "c", "jsonl://in.jsonl", extract={"format": "csv"})
    with pytest.raises(PipelineError, match="load.endpoint_url: only for s3:// destinations"):
        connector_spec(tmp_path / "d", "jsonl://in.jsonl", load={"endpoint_url": "http://x"})


async def test_no_credentials_is_one_clear_line(tmp_path, s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConnectorError, match="no AWS credentials"):
        await read_records(open_source(connector_spec(tmp_path, "s3://any-bucket/x/")))


async def test_endpoint_and_keys_from_the_pipeline(tmp_path, s3, monkeypatch):
    s3.client().create_bucket(Bucket="explicit")
    put_jsonl(s3.client(), "explicit", "k.jsonl", [{"id": "1"}])
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    loaded = connector_spec(tmp_path, "s3://explicit/", extract={
        "endpoint_url": s3.endpoint, "region": "eu-west-1", "aws_access_key_id": "k",
        "aws_secret_access_key": "s", "id_field": "id"})
    assert [r.id for r in await read_records(open_source(loaded))] == ["1"]


# ---------------------------------------------------------------- sink


async def test_parts_are_named_per_run_and_batch_and_hostile_text_round_trips(tmp_path, s3):
    client = s3.client()
    client.create_bucket(Bucket="out")
    loaded = connector_spec(tmp_path, "jsonl://in.jsonl", "s3://out/results")
    rows = [{"id": f"h{i}", "text": text, "nested": {"t": text}} for i, text in enumerate(HOSTILE_TEXTS)]
    sink = open_sink(loaded)
    await sink.open("20260101-000000-abc123")
    await sink.write(rows[:5])
    await sink.write(rows[5:])
    await sink.commit()
    assert keys(client, "out") == ["results/20260101-000000-abc123/_SUCCESS",
                                   "results/20260101-000000-abc123/part-00001.jsonl",
                                   "results/20260101-000000-abc123/part-00002.jsonl"]
    assert read_parts(client, "out", "results/") == rows

    # The written parts read back through the S3 source (which skips _SUCCESS).
    back = await read_records(open_source(connector_spec(tmp_path / "r", "s3://out/results/",
                                                         extract={"id_field": "id"})))
    assert [r.data for r in back] == rows


async def test_a_retried_batch_overwrites_its_part(tmp_path, s3):
    client = s3.client()
    client.create_bucket(Bucket="out")
    loaded = connector_spec(tmp_path, "jsonl://in.jsonl", "s3://out/p/")
    for _ in range(2):  # the same run written twice: same names, no duplicates
        sink = open_sink(loaded)
        await sink.open("run-1")
        await sink.write([{"id": "1"}, {"id": "2"}])
        await sink.write([{"id": "3"}])
        await sink.commit()
    assert sorted(r["id"] for r in read_parts(client, "out", "p/")) == ["1", "2", "3"]

    sink = open_sink(loaded)
    await sink.open("run-2")
    with pytest.raises(LoadError, match="cannot encode a row"):
        await sink.write([{"id": "bad \udc80 surrogate"}])
    await sink.write([{"id": "4"}])  # takes the number the failed batch did not use
    await sink.commit()
    assert keys(client, "out", "p/run-2/") == ["p/run-2/_SUCCESS", "p/run-2/part-00001.jsonl"]


async def test_replace_keeps_only_this_run_and_abort_removes_it(tmp_path, s3):
    client = s3.client()
    client.create_bucket(Bucket="out")
    put_jsonl(client, "out", "p/old-run/part-00001.jsonl", [{"id": "old"}])
    put_jsonl(client, "out", "elsewhere/keep.jsonl", [{"id": "keep"}])
    loaded = connector_spec(tmp_path, "jsonl://in.jsonl", "s3://out/p/", load={"mode": "replace"})

    sink = open_sink(loaded)
    await sink.open("run-a")
    await sink.write([{"id": "a"}])
    await sink.abort()
    assert keys(client, "out") == ["elsewhere/keep.jsonl", "p/old-run/part-00001.jsonl"]

    sink = open_sink(loaded)
    await sink.open("run-b")
    await sink.write([{"id": "b"}])
    await sink.commit()
    assert keys(client, "out") == ["elsewhere/keep.jsonl", "p/run-b/_SUCCESS",
                                   "p/run-b/part-00001.jsonl"]

    with pytest.raises(ConnectorError, match="mode replace deletes every other object"):
        await open_sink(connector_spec(tmp_path / "x", "jsonl://in.jsonl", "s3://out/",
                                       load={"mode": "replace"})).open("r")


async def test_sink_refusals_are_clear(tmp_path, s3):
    with pytest.raises(ConnectorError, match="s3 destination s3://nobucket/p/: cannot write: no such bucket"):
        await open_sink(connector_spec(tmp_path, "jsonl://in.jsonl", "s3://nobucket/p/")).open("r")
    s3.client().create_bucket(Bucket="out")
    with pytest.raises(ConnectorError, match="mode upsert needs a sqlite or postgres destination"):
        await open_sink(connector_spec(tmp_path / "u", "jsonl://in.jsonl", "s3://out/p/",
                                       load={"mode": "upsert", "key": "id"})).open("r")


# ---------------------------------------------------------------- runs at once


async def test_a_run_whose_parts_a_replace_deleted_does_not_publish_half(tmp_path, s3):
    client = s3.client()
    client.create_bucket(Bucket="out")
    appending = open_sink(connector_spec(tmp_path / "b", "jsonl://in.jsonl", "s3://out/p/"))
    await appending.open("run-b")
    await appending.write([{"id": "b1"}])
    replacing = open_sink(connector_spec(tmp_path / "a", "jsonl://in.jsonl", "s3://out/p/",
                                         load={"mode": "replace"}))
    await replacing.open("run-a")
    await replacing.write([{"id": "a1"}])
    await replacing.commit()  # deletes run-b's first part while run-b is still writing
    await appending.write([{"id": "b2"}])
    with pytest.raises(DestinationBusy, match=r"1 of this run's 2 parts were deleted .* --resume"):
        await appending.commit()
    await appending.abort()
    # No _SUCCESS over a folder missing a part: readers see run-a only.
    assert keys(client, "out") == ["p/run-a/_SUCCESS", "p/run-a/part-00001.jsonl"]


async def test_an_s3_commit_waits_for_the_prefix_lock_and_takes_over_a_dead_ones(
        tmp_path, s3, monkeypatch):
    client = s3.client()
    client.create_bucket(Bucket="out")
    client.put_object(Bucket="out", Key="p/_loom.lock",
                      Body=json.dumps({"run_id": "run-x", "pid": 1, "host": "h"}).encode())
    loaded = connector_spec(tmp_path, "jsonl://in.jsonl", "s3://out/p/",
                            load={"lock_timeout_s": 0.5})
    sink = open_sink(loaded)
    notes: list[str] = []
    sink.notify = notes.append
    await sink.open("run-1")
    await sink.write([{"id": "1"}])
    with pytest.raises(DestinationBusy, match=r"still locked after 0.5 s by run run-x"):
        await sink.commit()
    await sink.abort()  # what the engine does then
    assert notes and "waiting for the lock on s3://out/p/_loom.lock" in notes[0]

    monkeypatch.setattr(object_lock, "STALE_AFTER_S", -1.0)  # the holder is long dead
    sink = open_sink(loaded)
    await sink.open("run-2")
    await sink.write([{"id": "2"}])
    await sink.commit()
    assert keys(client, "out") == ["p/run-2/_SUCCESS", "p/run-2/part-00001.jsonl"]
