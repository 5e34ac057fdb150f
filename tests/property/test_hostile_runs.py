"""Property tests: hostile records and hostile answers through whole runs.

Records full of Rich markup, lone surrogates, NUL, deep nesting, huge values, dict-method
column names and template syntax go through the JSONL and CSV sources and the JSONL, CSV and
SQLite sinks, while the loopback model echoes hostile text back. Whatever the draw: no
traceback, every record extracted ends loaded (once) or quarantined, the run finishes.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import cli
from tests.pipelines import write_pipeline

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

HOSTILE_TEXT = st.one_of(
    st.sampled_from([
        "[/]", "[/INST]", "[citation needed]", "[bold red]x", "[link=file:///etc/passwd]y[/link]",
        "\ud800", "a\udfffb", "\x00", "a\x00b", "{{ 7*7 }}", "{% for x in range(9) %}{% endfor %}",
        "{{ input.__class__ }}", "'; DROP TABLE results; --", "NaN", "Infinity", "\r\n\t",
        "\u202e\u200b", "🙂" * 3, "x" * 100_000, "",
    ]),
    st.text(max_size=20),
)
COLUMN = st.sampled_from(["items", "values", "keys", "pop", "update", "clear", "get", "copy",
                          "[/]", "text2", "{{ x }}"])


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


VALUE = st.one_of(HOSTILE_TEXT, st.integers(min_value=-10**30, max_value=10**30),
                  st.floats(allow_nan=True, allow_infinity=True),
                  st.integers(min_value=1, max_value=150).map(nested))
ANSWER = st.one_of(
    HOSTILE_TEXT,  # not JSON at all, or JSON-looking text
    VALUE.map(lambda v: json.dumps({"sentiment": "neutral", "echo": v})),  # NaN, \ud800 escapes
    HOSTILE_TEXT.map(lambda t: '{"sentiment": "neutral", "echo": "%s"}' % t.replace('"', "'")),
    st.integers(min_value=1, max_value=3000).map(
        lambda d: '{"sentiment": "neutral", "x": ' + "[" * d + "]" * d + "}"),
    st.just('{"sentiment": "neutral"}'),
    COLUMN.map(lambda key: json.dumps({"sentiment": "neutral", key: 1})),
)

RECORD = st.fixed_dictionaries({"text": HOSTILE_TEXT, "answer": ANSWER},
                               optional={"extra": VALUE, "column": COLUMN})


def _write_source(folder: Path, kind: str, records: list[dict[str, Any]]) -> str:
    if kind == "jsonl":
        lines = []
        for index, record in enumerate(records):
            row = {"id": f"r{index}", "text": record["text"], "expected": "neutral"}
            if "extra" in record:
                row[record.get("column", "extra")] = record["extra"]
            lines.append(json.dumps(row))  # NaN stays NaN, a surrogate becomes \ud800
        (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return "jsonl://data.jsonl"
    columns = ["id", "text", "expected"] + sorted(
        {r.get("column", "extra") for r in records if "extra" in r} - {"id", "text", "expected"})
    with (folder / "data.csv").open("w", newline="", encoding="utf-8",
                                    errors="surrogatepass") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index, record in enumerate(records):
            row = {"id": f"r{index}", "text": record["text"], "expected": "neutral"}
            if "extra" in record:
                row[record.get("column", "extra")] = record["extra"]
            writer.writerow([str(row.get(column, "")) for column in columns])
    return "csv://data.csv"


@SETTINGS
@given(records=st.lists(RECORD, min_size=1, max_size=6),
       source=st.sampled_from(["jsonl", "csv"]),
       sink=st.sampled_from(["jsonl", "csv", "sqlite"]))
def test_hostile_records_and_answers_end_loaded_once_or_quarantined(
        tmp_path_factory, llm_server, capsys, records, source, sink) -> None:
    folder = tmp_path_factory.mktemp("hostile")
    answers = {f"r{index}": record["answer"] for index, record in enumerate(records)}

    def respond(body: dict[str, Any]) -> str:
        prompt = " ".join(str(m.get("content")) for m in body.get("messages", []))
        found = re.search(r"record-id=(r\d+);", prompt)
        return answers.get(found.group(1), "{}") if found else "{}"

    llm_server.responder = respond
    destination = {"jsonl": "jsonl://out/results.jsonl", "csv": "csv://out/results.csv",
                   "sqlite": "sqlite://out/results.db"}[sink]
    uri = _write_source(folder, source, records)
    path = write_pipeline(
        folder, base_url=llm_server.base_url,
        prompt="record-id={{ input.id }};\n{{ input.text }}\n",
        extract={"source": uri, "id_field": "id", "batch_size": 3},
        transform={"output_schema": {"type": "object", "required": ["sentiment"]},
                   "max_retries": 0},
        load={"destination": destination, **({"table": "results"} if sink == "sqlite" else {})})

    code = cli.main(["--run", str(path), "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err[-3000:]
    summary = json.loads(out)
    counts = summary["records"]
    # A run in which no record passed did not do its work: failed, exit 1; else success.
    assert (code, summary["status"]) == ((0, "success") if counts["loaded"] else (1, "failed")), \
        err[-3000:]
    assert counts["extracted"] == len(records)
    assert counts["loaded"] + counts["quarantined"] == len(records) and counts["skipped"] == 0

    if sink == "jsonl":
        target = folder / "out" / "results.jsonl"
        ids = ([json.loads(line, parse_constant=_refuse)["id"]
                for line in target.read_text(encoding="utf-8").splitlines()]
               if target.exists() else [])
    elif sink == "csv":
        target = folder / "out" / "results.csv"
        ids = []
        if target.exists():
            with target.open(newline="", encoding="utf-8") as handle:
                ids = [row["id"] for row in csv.DictReader(handle)]
    else:
        target = folder / "out" / "results.db"
        if counts["loaded"]:
            with sqlite3.connect(target) as db:
                ids = [row[0] for row in db.execute('SELECT "id" FROM results')]
        else:
            ids = []
    assert len(ids) == counts["loaded"] and len(set(ids)) == len(ids)  # each loaded once

    code = cli.main(["quarantine", "list", "--run", summary["run_id"]])
    _, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err[-3000:]


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} in a JSON output")
