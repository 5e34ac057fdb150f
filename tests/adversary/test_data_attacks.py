"""Attacks on "hostile data stays data": the record is loaded once, whole, or quarantined with
a clear reason; nothing lost."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from tests.adversary.hostile import ROOT, Hostile, loom, ok, prompt_text
from tests.pipelines import reply, write_pipeline


def answer_from_prompt(n, body):
    return ok(prompt_text(body).split("reply: ", 1)[1].strip())


def test_output_keys_differing_only_in_case_lose_a_value_in_sqlite(tmp_path):
    """Promise 1 ("nothing lost"; a batch the destination cannot take is written row by row
    and only the offender quarantined). One answer is a JSON object with two keys that differ
    only in case, `{"sentiment": "positive", "Label": "a", "label": "b"}` (valid JSON, kept
    whole by the JSON Lines destination). Into SQLite, whose column names ignore case, the
    table gets one column `Label`, the INSERT names both, and SQLite keeps one of the two
    values: the record is counted loaded with `label: b` silently gone, no warning, no
    quarantine (core/connectors/sqlite.py:516, _shape folds names to lower case, and
    :455-457 inserts every key of the row)."""
    rows = [{"id": f"r{i}", "text": "t", "expected": "positive",
             "reply": reply("positive")} for i in range(4)]
    rows[2]["reply"] = json.dumps({"sentiment": "positive", "Label": "a", "label": "b"})
    with Hostile(answer_from_prompt) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  load={"destination": "sqlite://out/results.db",
                                        "table": "results"},
                                  evaluate={"evaluators": []})
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert code == 0, err
    db = sqlite3.connect(tmp_path / "p" / "out" / "results.db")
    db.row_factory = sqlite3.Row
    loaded = {row["id"]: dict(row) for row in db.execute('SELECT * FROM "results"')}
    quarantined = summary["records"]["quarantined"]
    if "r2" in loaded:
        values = sorted(str(v) for k, v in loaded["r2"].items() if k.lower() == "label")
        assert values == ["a", "b"], (
            f"r2 was loaded as {loaded['r2']} (its answer had Label=a and label=b), "
            f"{quarantined} quarantined, warnings: {err.strip()!r}")
    else:
        assert quarantined == 1, summary


def test_an_integer_past_int64_in_a_json_array_source_loses_every_later_record(tmp_path):
    """Promise 1 ("nothing lost"; bad rows are quarantined, not fatal). A json:// source of
    three objects, the second holding `"n": 18446744073709551616` (2**64: valid JSON, which
    Python's json reads; a uint64 counter or an order number). ijson's yajl2_c backend stops
    with "parse error: integer overflow", Loom quarantines element 1 as "invalid JSON ... the
    rest of the file cannot be read" and never reads element 2: the run says `success` with 2
    extracted, and record `c` is neither loaded nor quarantined
    (core/connectors/parsing.py:387, ijson.basic_parse with the yajl2_c backend; :399-404)."""
    folder = tmp_path / "p"
    folder.mkdir()
    good = reply("positive")
    elements = [{"id": "a", "text": "x", "reply": good},
                {"id": "b", "text": "x", "n": 2**64, "reply": good},
                {"id": "c", "text": "x", "reply": good}]
    (folder / "data.json").write_text(json.dumps(elements), encoding="utf-8")
    with Hostile(answer_from_prompt) as server:
        pipeline = write_pipeline(folder, base_url=server.base_url,
                                  extract={"source": "json://data.json", "id_field": "id"},
                                  evaluate={"evaluators": []})
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert code == 0, err
    out = folder / "out" / "results.jsonl"
    loaded = [json.loads(line)["id"] for line in out.read_text().splitlines()] \
        if out.exists() else []
    assert summary["records"]["extracted"] == 3, (summary["records"], loaded)
    assert "c" in loaded, (summary["records"], loaded)


def test_a_record_id_with_terminal_escapes_reaches_the_terminal_raw(tmp_path):
    """Promise 1 ("text from records ... never becomes ... a log line unescaped"; the run's own
    warning shows the id escaped, `'x\\nerror: FAKE LINE\\x1b[2J...'`). A JSONL record whose id
    is `x\\nerror: FAKE LINE\\x1b[2J\\x1b]0;title\\x07`, quarantined (its answer is not JSON).
    `loom quarantine show 1` prints the id raw in its header line: a forged `error: FAKE LINE`
    line, an ESC[2J that clears the screen and an OSC that sets the terminal's title;
    `loom quarantine list` prints the ESC sequences raw in the record column
    (core/cli/quarantine.py, the header built from row.record_id as plain text)."""
    folder = tmp_path / "p"
    folder.mkdir()
    evil = "x\nerror: FAKE LINE\x1b[2J\x1b]0;title\x07"
    (folder / "data.jsonl").write_text(
        json.dumps({"id": evil, "text": "x", "reply": "not json"}) + "\n", encoding="utf-8")
    with Hostile(answer_from_prompt) as server:
        pipeline = write_pipeline(folder, base_url=server.base_url,
                                  extract={"source": "jsonl://data.jsonl", "id_field": "id"},
                                  transform={"max_retries": 0}, evaluate={"evaluators": []})
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert summary is not None and summary["records"]["quarantined"] == 1, err
    shown = {}
    for args in (["quarantine", "show", "1"], ["quarantine", "list"]):
        proc = subprocess.run([sys.executable, "-m", "loom_tui.cli", *args], cwd=ROOT,
                              env=os.environ.copy(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        shown[" ".join(args)] = proc.stdout
    raw = {name: [line for line in text.splitlines() if "\x1b" in line or
                  line.startswith("error: FAKE")] for name, text in shown.items()}
    assert not any(raw.values()), f"data reached the terminal unescaped: {raw}"
