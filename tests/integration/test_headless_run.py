"""Whole pipelines through `loom --run` against the loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import sqlite3

import pytest

from core import cli
from tests.pipelines import read_jsonl, reply, write_pipeline

LABELS = ["positive", "negative", "neutral"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows_for(count: int, *, bad_every: int = 0) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        expected = LABELS[i % 3]
        answer = expected
        if bad_every and i % bad_every == 0:
            answer = LABELS[(i + 1) % 3]  # the model disagrees with the truth: gate fails
        rows.append({"id": f"r{i:04d}", "text": f"review number {i}", "expected": expected,
                     "reply": reply(answer)})
    return rows


def test_few_hundred_rows_load_exactly_once_with_one_call_each(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(300, bad_every=10),
                              base_url=llm_server.base_url)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "success"
    assert summary["records"] == {"extracted": 300, "loaded": 270, "quarantined": 30, "skipped": 0}
    assert llm_server.count == 300  # one call per record, no repairs needed

    loaded = read_jsonl(tmp_path / "p" / "out" / "results.jsonl")
    ids = [row["id"] for row in loaded]
    assert len(ids) == len(set(ids)) == 270
    assert all(int(i[1:]) % 10 != 0 for i in ids)

    code, out, _ = run_cli(capsys, "runs", "--json")
    runs = json.loads(out)
    assert runs[0]["run_id"] == summary["run_id"]
    assert runs[0]["records"]["loaded"] == 270
    assert set(summary) >= {"run_id", "status", "records", "cost_usd", "tokens", "duration_s",
                            "latency_s"}
    assert summary["tokens"]["input"] > 0 and summary["tokens"]["output"] > 0
    assert summary["cost_usd"] is not None and summary["cost_usd"] > 0


def test_quarantine_keeps_stage_reason_input_output_and_scores(tmp_path, llm_server, capsys):
    rows = rows_for(6)
    rows[1]["reply"] = reply(LABELS[2])  # disagrees with expected negative
    pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url)
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    run_id = json.loads(out)["run_id"]

    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", run_id, "--json")
    items = json.loads(out)
    assert [item["record_id"] for item in items] == ["r0001"]
    item = items[0]
    assert item["stage"] == "evaluate"
    assert "matches" in item["reason"]
    assert item["input"]["text"] == "review number 1"
    assert item["output"] == {"sentiment": "neutral"}
    by_name = {score["evaluator"]: score for score in item["scores"]}
    assert by_name["label_ok"]["passed"] is True
    assert by_name["matches"]["passed"] is False and by_name["matches"]["explanation"]


def test_hostile_rows_reach_the_model_and_the_destination_unchanged(tmp_path, llm_server, capsys):
    hostile = [
        'quotes "double" and \'single\'', "commas, commas, commas", "line one\nline two\r\nthree",
        "unicode: café ñ 日本語 🙌 \u200b", "{{ 7*7 }} {% if x %}y{% endif %} {# c #}", "",
        "x" * 20_000, "'; DROP TABLE reviews; --",
    ]
    rows = [{"id": f"h{i}", "text": text, "expected": "neutral", "reply": reply("neutral")}
            for i, text in enumerate(hostile)]
    pipeline = write_pipeline(
        tmp_path / "p", rows=rows, base_url=llm_server.base_url,
        load={"destination": "csv://out/results.csv",
              "fields": {"id": "id", "text": "input.text", "sentiment": "output.sentiment"}})
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert json.loads(out)["records"]["loaded"] == len(hostile)

    import csv
    with (tmp_path / "p" / "out" / "results.csv").open(newline="", encoding="utf-8") as handle:
        written = {row["id"]: row["text"] for row in csv.DictReader(handle)}
    for i, text in enumerate(hostile):
        assert written[f"h{i}"] == text
    prompts = [body["messages"][-1]["content"] for body in llm_server.requests]
    assert any("{{ 7*7 }}" in p for p in prompts)  # data is never rendered as a template
    assert not any("49" in p for p in prompts)


def test_rejection_rate_above_the_limit_is_partial_and_passing_records_still_load(
        tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(20, bad_every=2),
                              base_url=llm_server.base_url,
                              evaluate={"max_rejection_rate": 0.2})
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    summary = json.loads(out)
    assert code == 3
    assert summary["status"] == "partial"
    assert summary["records"]["loaded"] == 10
    assert len(read_jsonl(tmp_path / "p" / "out" / "results.jsonl")) == 10


def test_transient_faults_are_retried_and_nothing_is_lost(tmp_path, llm_server, capsys):
    llm_server.script(["429", "500", "timeout", "malformed", "reset"])
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(30), base_url=llm_server.base_url,
                              transform={"timeout_s": 1.0, "max_retries": 6})
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"]["loaded"] == 30
    assert llm_server.count == 35  # 30 answers plus the 5 scripted failures


def test_invalid_output_is_repaired_once_then_quarantined_at_transform(tmp_path, llm_server, capsys):
    rows = rows_for(3)
    rows[0]["reply"] = '{"sentiment": "ecstatic"}'  # violates the enum, every time
    rows[1]["reply"] = "not json at all"
    pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url)
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 3, "loaded": 1, "quarantined": 2, "skipped": 0}
    assert llm_server.count == 5  # two records asked twice (one repair each), one once
    repair = [b for b in llm_server.requests if len(b["messages"]) == 3]
    assert len(repair) == 2
    assert "ecstatic" in repair[0]["messages"][1]["content"] or \
        "ecstatic" in repair[1]["messages"][1]["content"]

    code, out, _ = run_cli(capsys, "quarantine", "list", "--json")
    items = {item["record_id"]: item for item in json.loads(out)}
    assert items["r0000"]["stage"] == "transform"
    assert "output_schema" in items["r0000"]["reason"]
    assert items["r0000"]["raw_output"] == '{"sentiment": "ecstatic"}'
    assert items["r0001"]["stage"] == "transform"


def test_a_record_whose_prompt_cannot_render_is_quarantined_not_fatal(tmp_path, llm_server, capsys):
    rows = rows_for(3)
    pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                              prompt="{{ input.text }} {{ input.missing_column }}\nreply: {{ input.reply }}")
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    summary = json.loads(out)
    assert summary["records"]["quarantined"] == 3
    assert llm_server.count == 0
    code, out, _ = run_cli(capsys, "quarantine", "list", "--json")
    assert all("missing_column" in item["reason"] for item in json.loads(out))


def test_sqlite_source_to_sqlite_upsert_twice_has_no_duplicates(tmp_path, llm_server, capsys):
    folder = tmp_path / "p"
    folder.mkdir()
    source = sqlite3.connect(folder / "source.db")
    source.execute("CREATE TABLE reviews (id TEXT PRIMARY KEY, text TEXT, expected TEXT, reply TEXT)")
    source.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?)",
                       [(r["id"], r["text"], r["expected"], r["reply"]) for r in rows_for(40)])
    source.commit()
    source.close()
    pipeline = write_pipeline(
        folder, base_url=llm_server.base_url,
        extract={"source": "sqlite://source.db", "query": "SELECT * FROM reviews WHERE id >= {{ params.first }}"},
        params={"first": "r0010"},
        load={"destination": "sqlite://out.db", "table": "Sentiment Scores", "mode": "upsert"})
    for _ in range(2):
        code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--no-cache")
        assert code == 0, err
        assert json.loads(out)["records"]["loaded"] == 30
    out_db = sqlite3.connect(folder / "out.db")
    count, distinct = out_db.execute(
        'SELECT COUNT(*), COUNT(DISTINCT id) FROM "Sentiment Scores"').fetchone()
    assert count == distinct == 30


def test_record_then_replay_gives_the_same_outputs_without_calls(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(12), base_url=llm_server.base_url)
    cassette = tmp_path / "p" / "recorded.jsonl"
    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json", "--record", str(cassette))
    assert code == 0, err
    # Rows land in completion order (concurrent calls), so compare them by id.
    first = sorted(read_jsonl(tmp_path / "p" / "out" / "results.jsonl"), key=lambda r: r["id"])
    calls = llm_server.count

    code, out, err = run_cli(capsys, "--run", str(pipeline), "--json",
                             "--set", "transform.provider=replay",
                             "--set", f"transform.cassette={cassette}",
                             "--set", "load.mode=replace")
    assert code == 0, err
    assert llm_server.count == calls
    again = sorted(read_jsonl(tmp_path / "p" / "out" / "results.jsonl"), key=lambda r: r["id"])
    assert again == first


def test_a_replay_miss_is_quarantined_with_a_clear_reason(tmp_path, capsys):
    cassette = tmp_path / "p" / "empty.jsonl"
    cassette.parent.mkdir(parents=True)
    cassette.write_text('{"loom_cassette": 1, "note": "empty on purpose"}\n', encoding="utf-8")
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(2),
                              transform={"provider": "replay", "cassette": "empty.jsonl"})
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    assert json.loads(out)["records"]["quarantined"] == 2
    code, out, _ = run_cli(capsys, "quarantine", "list", "--json")
    assert all("no recorded answer" in item["reason"] for item in json.loads(out))


def test_bad_credentials_fail_the_run_instead_of_quarantining_everything(tmp_path, llm_server, capsys):
    llm_server.script(["401"])
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(10), base_url=llm_server.base_url,
                              transform={"concurrency": 1})
    code, out, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    summary = json.loads(out)
    assert code == 1
    assert summary["status"] == "failed"
    records = summary["records"]
    assert records["extracted"] == records["loaded"] + records["quarantined"] + records["skipped"]
    assert records["quarantined"] == 0
