"""Input that tries to break Loom, through `loom --run` end to end: record values are data (never
templates, never SQL), a prompt that reaches past the sandbox is refused with exit 2, and
unreadable, huge or incomplete records are quarantined with their reason, never a crash.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from core import cli
from tests.pipelines import reply, write_pipeline

NEUTRAL = reply("neutral")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


TEMPLATE_TEXTS = [
    "{{ 7*7 }}",
    "{% for x in range(3) %}loop{% endfor %}",
    "{{ input.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ config }} {{ self }} {{ lipsum.__globals__ }}",
    "{% raw %}{{ raw }}{% endraw %} {# comment #}",
]
SQL_TEXTS = ["'; DROP TABLE \"Review Scores\"; --", 'Robert"); DELETE FROM sqlite_master;--',
             "1 OR 1=1", "\\'; SELECT 1; --"]


def test_template_and_sql_in_data_reach_the_model_and_the_table_literally(
        tmp_path, llm_server, capsys):
    texts = TEMPLATE_TEXTS + SQL_TEXTS
    rows = [{"id": f"h{i}", "text": text, "expected": "neutral", "reply": NEUTRAL}
            for i, text in enumerate(texts)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          load={"destination": "sqlite://out/dest.db",
                                "table": 'Review "Scores"; DROP TABLE x',
                                "fields": {"id": "id", "text": "input.text",
                                           "sentiment": "output.sentiment"}})
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["records"]["loaded"] == len(texts)

    prompts = [body["messages"][-1]["content"] for body in llm_server.requests]
    for text in texts:
        # The prompt template puts the value on its own line: exactly as written.
        assert sum(f"\n{text}\n" in prompt for prompt in prompts) == 1, text
    assert not any("49" in p or "loop" * 3 in p or "<class" in p for p in prompts)

    with sqlite3.connect(tmp_path / "p" / "out" / "dest.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        stored = dict(db.execute('SELECT "id", "text" FROM "Review ""Scores""; DROP TABLE x"'))
    assert 'Review "Scores"; DROP TABLE x' in tables
    assert stored == {f"h{i}": text for i, text in enumerate(texts)}


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ input.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{% set x = [].append(1) %}{{ x }}",
])
def test_a_prompt_that_reaches_past_the_sandbox_is_refused_with_exit_2(
        tmp_path, llm_server, capsys, escape):
    rows = [{"id": f"r{i}", "text": "fine", "expected": "neutral", "reply": NEUTRAL}
            for i in range(5)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          prompt="Classify.\n{{ input.text }}\n" + escape + "\n")
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "the template tried something the sandbox forbids" in err
    assert "pwned" not in err and llm_server.count == 0  # nothing was sent anywhere
    assert not (tmp_path / "p" / "out" / "results.jsonl").exists()

    code, out, _ = run_cli(capsys, "runs", "--json")
    (run,) = json.loads(out)
    assert run["status"] == "failed"  # recorded, with why
    assert "sandbox forbids" in run["status_reason"]
    assert run["records"]["loaded"] == 0


def test_unreadable_huge_and_incomplete_records_are_quarantined_the_rest_load(
        tmp_path, llm_server, capsys):
    folder = tmp_path / "p"
    path = write_pipeline(folder, base_url=llm_server.base_url,
                          prompt="Classify {{ input.title }}:\n{{ input.text }}\nreply: {{ input.reply }}\n",
                          extract={"source": "jsonl://reviews.jsonl", "id_field": "id"})
    good = {"title": "t", "text": "fine", "expected": "neutral", "reply": NEUTRAL}
    big = "b" * (512 << 10)  # half a megabyte: goes through
    huge = "y" * (5 << 20)  # 5 MB: more than the model's endpoint takes in one request
    lines = [
        json.dumps({"id": "ok1", **good}).encode(),
        b'{"id": "nul", "text": "a\x00b", "title": "t"}',  # a raw NUL byte: not JSON
        b'{"id": "utf8", "title": "t", "text": "caf\xe9 \xff\xfe"}',  # invalid UTF-8
        b"\x89PNG\r\x1a\x00\x00\x00\rIHDR binary junk \xff\xd8\xff",
        json.dumps({"id": "big", **good, "text": big}).encode(),
        json.dumps({"id": "huge", **good, "text": huge}).encode(),
        json.dumps({"id": "notitle", "text": "x", "expected": "neutral", "reply": NEUTRAL}).encode(),
        b'{"id": "trunc", "text": "no end',
        json.dumps({"id": "ok2", **good}).encode(),
    ]
    (folder / "reviews.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["records"] == {"extracted": 9, "loaded": 3, "quarantined": 6, "skipped": 0}
    loaded = [json.loads(line)["id"] for line in
              (folder / "out" / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(loaded) == ["big", "ok1", "ok2"]

    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", summary["run_id"], "--json")
    by_stage: dict[str, list[str]] = {}
    for item in json.loads(out):
        by_stage.setdefault(item["stage"], []).append(item["reason"])
    assert len(by_stage["extract"]) == 4  # NUL, invalid UTF-8, binary junk, cut-off line
    missing, too_big = sorted(by_stage["transform"])
    assert missing == "line 1: 'dict object' has no attribute 'title'"  # the template's words
    assert "HTTP 413" in too_big  # the endpoint's refusal, for that record only


def test_a_csv_with_binary_junk_and_a_missing_column(tmp_path, llm_server, capsys):
    folder = tmp_path / "p"
    path = write_pipeline(folder, base_url=llm_server.base_url,
                          prompt="{{ input.text }} by {{ input.author }}\nreply: {{ input.reply }}\n")
    reply_cell = '"' + NEUTRAL.replace('"', '""') + '"'
    data = (b"id,text,expected,reply\n"
            + f"r1,plain,neutral,{reply_cell}\n".encode()
            + b"r2,caf\xe9\xff,neutral,x\n"
            + b"r3,nul\x00here,neutral,x\n"
            + b"\xff\xfe\x00\x01\x02\x03\n"
            + f"r5,plain too,neutral,{reply_cell}\n".encode())
    (folder / "reviews.csv").write_bytes(data)
    code, out, err = run_cli(capsys, "--run", str(path), "--json")
    summary = json.loads(out)
    # A run in which no record passed did not do its work: failed, exit 1, never `success`.
    assert code == 1 and summary["status"] == "failed", err
    assert "no record passed: all 5 processed records were quarantined" in summary["status_reason"]
    # No row has the prompt's `author`: the readable ones are quarantined at transform with
    # the template's error, the unreadable ones at extract; nothing crashed, nothing was sent.
    assert summary["records"] == {"extracted": 5, "loaded": 0, "quarantined": 5, "skipped": 0}
    assert llm_server.count == 0
    code, out, _ = run_cli(capsys, "quarantine", "list", "--run", summary["run_id"], "--json")
    stages = sorted(item["stage"] for item in json.loads(out))
    assert stages == ["extract", "extract", "extract", "transform", "transform"]
