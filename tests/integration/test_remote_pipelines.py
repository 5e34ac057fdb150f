"""Whole pipelines through `loom --run` with PostgreSQL and S3 at either end, and the history
store on PostgreSQL shared by several `loom` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli
from tests.pipelines import reply, write_pipeline
from tests.support.postgres import ROLE_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
LOOM = [sys.executable, "-c", "import sys; from loom_tui.cli import main; sys.exit(main())"]
LABELS = ["positive", "negative", "neutral"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def review(i: int, *, bad_every: int = 0) -> dict[str, str]:
    expected = LABELS[i % 3]
    answer = LABELS[(i + 1) % 3] if bad_every and i % bad_every == 0 else expected
    return {"id": f"r{i:04d}", "text": f"review {i}: it's \"fine\"; DROP TABLE reviews; --",
            "expected": expected, "reply": reply(answer)}


def pg_url_with_placeholder(database) -> str:
    return database.dsn.replace(ROLE_PASSWORD, "${LOOM_PG_PASSWORD}")


# ---------------------------------------------------------------- PostgreSQL -> PostgreSQL


def test_500_rows_from_a_postgres_query_upserted_twice(tmp_path, pg_database, llm_server, capsys,
                                                        monkeypatch):
    pg_database.sql("CREATE TABLE reviews (id text PRIMARY KEY, text text, expected text, "
                    "reply text, batch int)")
    rows = [review(i, bad_every=10) for i in range(600)]
    values = ", ".join(
        "(" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in row.values()) + f", {i // 500})"
        for i, row in enumerate(rows))
    pg_database.sql(f"INSERT INTO reviews (id, text, expected, reply, batch) VALUES {values}")
    before = pg_database.rows("SELECT md5(string_agg(r::text, ',' ORDER BY id)) FROM reviews r")
    monkeypatch.setenv("LOOM_PG_PASSWORD", ROLE_PASSWORD)
    url = pg_url_with_placeholder(pg_database)
    pipeline = write_pipeline(
        tmp_path / "p", base_url=llm_server.base_url,
        extract={"source": url, "query": "SELECT id, text, expected, reply FROM reviews "
                                         "WHERE batch = {{ params.batch }} ORDER BY id",
                 "batch_size": 100},
        params={"batch": 0}, transform={"concurrency": 16},
        load={"destination": url, "table": "Sentiment Scores", "mode": "upsert", "key": "id",
              "fields": {"id": "id", "text": "input.text", "sentiment": "output.sentiment",
                         "output": "output"}})

    for attempt in range(2):
        code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--no-cache")
        assert code == 0, err
        summary = json.loads(out)
        assert summary["records"] == {"extracted": 500, "loaded": 450, "quarantined": 50,
                                      "skipped": 0}
    assert llm_server.count == 1000
    count, distinct = pg_database.rows('SELECT count(*), count(DISTINCT id) FROM "Sentiment Scores"')[0]
    assert count == distinct == "450"
    loaded = {row[0]: row[1:] for row in pg_database.rows(
        'SELECT id, text, sentiment, output->>\'sentiment\' FROM "Sentiment Scores"')}
    expected = {row["id"]: row for i, row in enumerate(rows[:500]) if i % 10}
    assert set(loaded) == set(expected)
    for record_id, (text, sentiment, from_json) in loaded.items():
        assert text == expected[record_id]["text"]
        assert sentiment == from_json == expected[record_id]["expected"]
    assert pg_database.rows("SELECT md5(string_agg(r::text, ',' ORDER BY id)) FROM reviews r") == before

    # The history keeps the placeholder, never the password.
    code, out, _ = run_cli(capsys, "runs", "--json")
    assert len(json.loads(out)) == 2
    database = (Path(os.environ["LOOM_HOME"]) / "loom.db").read_bytes()
    assert b"${LOOM_PG_PASSWORD}" in database and ROLE_PASSWORD.encode() not in database


def test_a_password_full_of_url_characters_connects_through_a_placeholder(
        tmp_path, postgres_cluster, pg_database, llm_server, capsys, monkeypatch):
    password = "p@ss:w/rd#?% 'x\""
    postgres_cluster.psql("CREATE ROLE odd LOGIN PASSWORD " + "'" + password.replace("'", "''") + "'")
    try:
        pg_database.sql("CREATE TABLE reviews (id text, text text, expected text, reply text)")
        pg_database.sql("INSERT INTO reviews VALUES ('r1', 'a', 'positive', '{\"sentiment\": \"positive\"}')")
        pg_database.sql("GRANT SELECT ON reviews TO odd")
        monkeypatch.setenv("ODD_PASSWORD", password)
        url = f"postgres://odd:${{ODD_PASSWORD}}@127.0.0.1:{postgres_cluster.port}/{pg_database.name}"
        pipeline = write_pipeline(tmp_path / "p", base_url=llm_server.base_url,
                                  extract={"source": url, "table": "reviews"})
        code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
        assert code == 0, err
        assert json.loads(out)["records"]["loaded"] == 1
    finally:
        pg_database.drop()
        postgres_cluster.psql("DROP ROLE IF EXISTS odd")


def test_an_unreachable_destination_fails_the_run_with_one_line(tmp_path, pg_database, llm_server,
                                                                 capsys, monkeypatch):
    monkeypatch.setenv("LOOM_PG_PASSWORD", "certainly-wrong-pw")
    pipeline = write_pipeline(
        tmp_path / "p", rows=[review(i) for i in range(3)], base_url=llm_server.base_url,
        load={"destination": pg_url_with_placeholder(pg_database), "table": "t"})
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 1
    summary = json.loads(out)
    # The destination is opened before anything is read: no record was read, no call made.
    assert summary["status"] == "failed" and summary["records"]["extracted"] == 0
    assert llm_server.count == 0
    code, out, _ = run_cli(capsys, "runs", "--json")
    reason = json.loads(out)[0]["status_reason"]
    assert 'password authentication failed for user "loom"' in reason
    assert "certainly-wrong-pw" not in reason + err and "loom:***@" in reason


# ---------------------------------------------------------------- S3 -> S3


def test_300_jsonl_rows_across_three_s3_objects_in_the_same_out(tmp_path, s3, llm_server, capsys,
                                                              monkeypatch):
    client = s3.client()
    client.create_bucket(Bucket="reviews-in")
    client.create_bucket(Bucket="reviews-out")
    rows = [review(i) for i in range(300)]
    for n in range(3):
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[n * 100:(n + 1) * 100])
        client.put_object(Bucket="reviews-in", Key=f"2025/11/part-{n}.jsonl", Body=body.encode())
    # Endpoint and keys from the pipeline, the keys as ${...} placeholders: with the standard
    # AWS_* variables gone, nothing else could have authenticated (the connector tests cover
    # AWS_ENDPOINT_URL_S3 and the chain).
    monkeypatch.setenv("S3_KEY_ID", os.environ["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("S3_SECRET", os.environ["AWS_SECRET_ACCESS_KEY"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name)
    reach = {"endpoint_url": s3.endpoint, "aws_access_key_id": "${S3_KEY_ID}",
             "aws_secret_access_key": "${S3_SECRET}"}
    pipeline = write_pipeline(
        tmp_path / "p", base_url=llm_server.base_url,
        extract={"source": "s3://reviews-in/2025/", "batch_size": 50, **reach},
        load={"destination": "s3://reviews-out/sentiment/", "batch_size": 100, **reach,
              "fields": {"id": "id", "text": "input.text", "expected": "input.expected",
                         "reply": "input.reply", "sentiment": "output.sentiment"}})
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 300, "loaded": 300, "quarantined": 0, "skipped": 0}

    keys = [item["Key"] for item in client.list_objects_v2(Bucket="reviews-out")["Contents"]]
    run_id = summary["run_id"]
    # One part per batch (a batch also closes after a second's wait, so there may be more
    # than three on a busy machine), numbered without gaps.
    parts = len(keys) - 1
    assert parts >= 3
    assert keys == [f"sentiment/{run_id}/_SUCCESS"] + [
        f"sentiment/{run_id}/part-{n:05d}.jsonl" for n in range(1, parts + 1)]
    out_rows = []
    for key in keys[1:]:
        body = client.get_object(Bucket="reviews-out", Key=key)["Body"].read().decode("utf-8")
        out_rows += [json.loads(line) for line in body.splitlines()]
    by_id = {row["id"]: row for row in out_rows}
    assert len(out_rows) == len(by_id) == 300
    for row in rows:
        written = by_id[row["id"]]
        assert {k: written[k] for k in row} == row
        assert written["sentiment"] == row["expected"]


# ---------------------------------------------------------------- the store on PostgreSQL


def test_a_whole_run_and_its_quarantine_on_a_postgres_store(tmp_path, pg_database, llm_server,
                                                            capsys, monkeypatch):
    monkeypatch.setenv("LOOM_STORE_URL", pg_database.url)
    rows = [review(i, bad_every=4) for i in range(40)]
    rows[1]["text"] = "NUL \x00 inside, and unicode 日本語"  # PostgreSQL text cannot hold NUL
    pipeline = write_pipeline(tmp_path / "p", base_url=llm_server.base_url,
                              extract={"source": "jsonl://reviews.jsonl"})
    (tmp_path / "p" / "reviews.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 40, "loaded": 30, "quarantined": 10, "skipped": 0}

    code, out, _ = run_cli(capsys, "runs", "--json")
    (run,) = json.loads(out)
    assert run["run_id"] == summary["run_id"] and run["records"]["loaded"] == 30
    code, out, _ = run_cli(capsys, "quarantine", "list", "--json", "--limit", "100")
    items = json.loads(out)
    assert sorted(i["record_id"] for i in items) == [f"r{i:04d}" for i in range(0, 40, 4)]
    assert pg_database.rows("SELECT count(*) FROM record_results") == [["40"]]
    assert pg_database.rows("SELECT input->>'text' FROM record_results WHERE record_id = 'r0001'") == \
        [["NUL \ufffd inside, and unicode 日本語"]]
    assert not (Path(os.environ["LOOM_HOME"]) / "loom.db").exists()  # nothing went to SQLite


def test_two_loom_processes_share_one_postgres_history_and_quarantine(tmp_path, pg_database,
                                                                      llm_server):
    pipelines = []
    for name in ("first", "second"):
        path = write_pipeline(tmp_path / name, rows=[review(i, bad_every=5) for i in range(60)],
                              base_url=llm_server.base_url)
        path.write_text(path.read_text().replace("name: test_pipeline", f"name: {name}"))
        pipelines.append(path)
    env = {**os.environ, "LOOM_STORE_URL": pg_database.url}
    # Both start on a brand-new database: they also race to create the schema.
    processes = [subprocess.Popen([*LOOM, "--run", str(path), "--json"], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for path in pipelines]
    outcomes = [process.communicate(timeout=180) for process in processes]
    for process, (out, err) in zip(processes, outcomes):
        assert process.returncode == 0, err
    run_ids = {json.loads(out)["run_id"] for out, _ in outcomes}

    listed = subprocess.run([*LOOM, "runs", "--json"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    runs = json.loads(listed.stdout)
    assert {run["run_id"] for run in runs} == run_ids
    assert {run["pipeline"] for run in runs} == {"first", "second"}
    quarantine = subprocess.run([*LOOM, "quarantine", "list", "--json", "--limit", "100"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=60)
    assert {item["pipeline"] for item in json.loads(quarantine.stdout)} == {"first", "second"}
    assert len(json.loads(quarantine.stdout)) == 24


def test_storage_url_in_config_yaml_with_a_keyring_placeholder(tmp_path, pg_database, file_keyring,
                                                               loom_home, llm_server, capsys):
    import keyring

    url = pg_database.url.replace(ROLE_PASSWORD, "${LOOM_STORE_PASSWORD}")
    (loom_home / "config.yaml").write_text(f"storage:\n  url: {url}\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "runs")
    assert code == 2
    assert err == (f"error: {loom_home / 'config.yaml'}: storage.url: secret LOOM_STORE_PASSWORD is "
                   "not set (looked in the keyring service 'loom' and the environment; set it with "
                   "`loom secrets set LOOM_STORE_PASSWORD` or export LOOM_STORE_PASSWORD)\n")

    keyring.set_password("loom", "LOOM_STORE_PASSWORD", ROLE_PASSWORD)
    pipeline = write_pipeline(tmp_path / "p", rows=[review(i) for i in range(5)],
                              base_url=llm_server.base_url)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert pg_database.rows("SELECT run_id FROM pipeline_runs") == [[json.loads(out)["run_id"]]]
