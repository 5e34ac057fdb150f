"""Hostile bytes, run as written through real `loom` processes (issue 13, items 7-14, 16, 19
and "Also"): Rich markup, lone surrogates, deep nesting, bad database values, dict-method
column names, templates that try to exhaust the machine, billion-laughs YAML, NaN, duplicate
YAML keys, huge CLI integers, text-emitting SQL template blocks and literal secrets. Each ends
with the record loaded once or quarantined with a clear reason, a run that finishes, and a
one-line error where the user erred.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.pipelines import read_jsonl, reply, write_pipeline
from tests.support.loom_process import ROOT, store_rows

NEUTRAL = reply("neutral")
GOOD = {"text": "fine", "expected": "neutral", "reply": NEUTRAL}


def loom(*args: str, memory_mb: int | None = None, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`loom ARGS…` in a process of its own; `memory_mb` caps its address space, so that a
    regression fails with MemoryError instead of taking the machine down."""

    def cap() -> None:
        if memory_mb is not None:
            limit = memory_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        return subprocess.run([sys.executable, "-m", "loom_tui.cli", *args], cwd=ROOT,
                              env=env or dict(os.environ), capture_output=True, text=True,
                              timeout=timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"loom {' '.join(args)[:200]} ran past {timeout} s") from exc


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    return proc.stderr


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr.split("error:")[0], \
        proc.stderr[-3000:]


def run_json(pipeline: Path, *args: str, expect: int = 0, **kw: Any) -> dict[str, Any]:
    proc = loom("--run", str(pipeline), "--json", *args, **kw)
    no_traceback(proc)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def quarantine(run_id: str) -> dict[str, str]:
    proc = loom("quarantine", "list", "--run", run_id, "--json")
    assert proc.returncode == 0, proc.stderr
    return {item["record_id"]: item["reason"] for item in json.loads(proc.stdout)}


def jsonl_pipeline(folder: Path, lines: list[str], base_url: str, **sections: Any) -> Path:
    path = write_pipeline(folder, base_url=base_url,
                          extract={"source": "jsonl://reviews.jsonl", "id_field": "id"},
                          **sections)
    (folder / "reviews.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def statuses(loom_home: Path) -> list[str]:
    return [row[0] for row in store_rows(loom_home, "SELECT status FROM pipeline_runs")]


# ---------------------------------------------------------------- 7: Rich markup in data


def test_markup_in_ids_model_name_and_shard_group_is_printed_as_text(tmp_path, llm_server,
                                                                     loom_home):
    rows = [{"id": "[/]", **GOOD}, {"id": "[/]", **GOOD}, {"id": "[citation needed]", **GOOD},
            {"id": "[bold red]x", **GOOD}]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url)
    proc = loom("--run", str(path), "--set", "transform.model=[/]x", "--shard", "0/1",
                "--shard-group", "[/]")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[/]" in proc.stderr  # the duplicate-id warning names the id as written
    assert "group [/]" in proc.stdout
    assert statuses(loom_home) == ["success"]
    runs = loom("runs")
    no_traceback(runs)
    assert runs.returncode == 0 and "[/]" in runs.stdout


def test_quarantine_list_and_show_print_markup_in_answers_as_text(tmp_path, llm_server):
    rows = [{"id": "r1", "text": "t", "expected": "neutral",
             "reply": "[/INST] nope [citation needed] [bold]"}, {"id": "r2", **GOOD}]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url)
    summary = run_json(path)
    assert summary["records"]["quarantined"] == 1
    listing = loom("quarantine", "list")
    no_traceback(listing)
    assert listing.returncode == 0 and "[citation needed]" in listing.stdout
    (row_id,) = [item["id"] for item in json.loads(loom("quarantine", "list", "--json").stdout)]
    shown = loom("quarantine", "show", str(row_id))
    no_traceback(shown)
    assert shown.returncode == 0
    assert "[/INST]" in shown.stdout and "[citation needed]" in shown.stdout


def test_a_listener_that_raises_never_leaves_the_run_running(tmp_path, llm_server):
    """Whatever a display does with an event, the run ends and the store says how."""
    import asyncio

    from core.api import Workspace
    from core.engine import RunOptions

    path = write_pipeline(tmp_path / "p", rows=[{"id": f"r{i}", **GOOD} for i in range(5)],
                          base_url=llm_server.base_url)

    def broken(event: Any) -> None:
        raise RuntimeError("a display that breaks on every event")

    async def go() -> Any:
        async with Workspace(tmp_path / "p") as workspace:
            loaded = workspace.load(str(path))
            summary = await workspace.run_to_end(loaded, RunOptions(), listeners=[broken])
            run = await (await workspace.store()).get_run(summary.run_id)
            return summary, run

    summary, run = asyncio.run(go())
    assert summary.loaded == 5 and run.status == "success"


def test_no_text_reaches_rich_as_markup():
    """Every console in core is the one factory's (markup off): data is never parsed as
    markup, and Loom's own styles are Text spans."""
    import ast

    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        if "llm" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else \
                getattr(node.func, "id", "")
            markup = {k.arg: k.value for k in node.keywords}.get("markup")
            if name == "Console" and not (isinstance(markup, ast.Constant) and markup.value is False):
                offenders.append(f"{path.name}:{node.lineno} Console without markup=False")
            if name in ("from_markup", "render_str", "TextColumn") and \
                    not (isinstance(markup, ast.Constant) and markup.value is False):
                offenders.append(f"{path.name}:{node.lineno} {name} parses markup")
    assert offenders == []


# ---------------------------------------------------------------- 8: lone surrogates


def test_a_lone_surrogate_in_a_record_or_an_answer_is_quarantined(tmp_path, llm_server,
                                                                  loom_home):
    def answer(body: dict[str, Any]) -> str:
        prompt = " ".join(message["content"] for message in body["messages"])  # repairs too
        if "raw-surrogate" in prompt:  # a real lone surrogate in the answer's text
            return '{"sentiment": "neutral", "note": "x\ud800"}'
        if "escaped-surrogate" in prompt:  # a \\ud800 escape inside the answer's JSON
            return '{"sentiment": "neutral", "note": "x\\ud800"}'
        return NEUTRAL

    llm_server.responder = answer
    lines = [json.dumps({"id": "ok", "text": "fine", "expected": "neutral"}),
             '{"id": "in_record", "text": "bad \\ud800 text", "expected": "neutral"}',
             json.dumps({"id": "raw", "text": "raw-surrogate", "expected": "neutral"}),
             json.dumps({"id": "escaped", "text": "escaped-surrogate", "expected": "neutral"})]
    path = jsonl_pipeline(tmp_path / "p", lines, llm_server.base_url,
                          prompt="Classify this review.\n{{ input.text }}\n")
    for attempt in ("--run", "--resume"):  # and nothing left for a resume to replay
        if attempt == "--run":
            summary = run_json(path)
        else:
            proc = loom("--run", str(path), "--resume", "--json")
            assert "Traceback" not in proc.stderr, proc.stderr
    assert summary["status"] == "success"
    assert summary["records"] == {"extracted": 4, "loaded": 1, "quarantined": 3, "skipped": 0}
    reasons = quarantine(summary["run_id"])
    assert {"raw", "escaped"} < set(reasons) and len(reasons) == 3  # in_record: at extract
    assert all("surrogate" in reason for reason in reasons.values()), reasons
    loaded = read_jsonl(tmp_path / "p" / "out" / "results.jsonl")
    assert [row["id"] for row in loaded] == ["ok"]
    assert statuses(loom_home) == ["success"]


# ---------------------------------------------------------------- 9: nesting


def test_deep_records_and_answers_are_quarantined(tmp_path, llm_server):
    deep = "[" * 1100 + "]" * 1100
    lines = [json.dumps({"id": "ok", **GOOD}),
             '{"id": "deep", "text": ' + deep + ', "expected": "neutral"}',
             json.dumps({"id": "deep_answer", "text": "t", "expected": "neutral",
                         "reply": '{"sentiment": "neutral", "x": ' + "[" * 5000 + "]" * 5000 + "}"}),
             json.dumps({"id": "deep_65", "text": "t", "expected": "neutral",
                         "reply": '{"sentiment": "neutral", "x": ' + "[" * 70 + "]" * 70 + "}"})]
    path = jsonl_pipeline(tmp_path / "p", lines, llm_server.base_url)
    summary = run_json(path, memory_mb=3000)
    assert summary["records"] == {"extracted": 4, "loaded": 1, "quarantined": 3, "skipped": 0}
    reasons = quarantine(summary["run_id"])
    assert all("nested deeper than 64 levels" in r for r in reasons.values()), reasons


def test_a_json_file_nested_200000_deep_is_one_quarantined_record_in_bounded_memory(
        tmp_path, llm_server):
    folder = tmp_path / "p"
    path = write_pipeline(folder, base_url=llm_server.base_url,
                          extract={"source": "json://reviews.json", "id_field": "id"})
    good = json.dumps({"id": "ok", **GOOD})
    (folder / "reviews.json").write_text(
        "[" + good + ", {\"id\": \"deep\", \"v\": " + "[" * 200_000 + "]" * 200_000 + "}, "
        + json.dumps({"id": "ok2", **GOOD}) + "]", encoding="utf-8")
    started = time.monotonic()
    summary = run_json(path, memory_mb=3000, timeout=120)
    assert time.monotonic() - started < 60
    assert summary["records"] == {"extracted": 3, "loaded": 2, "quarantined": 1, "skipped": 0}
    (reason,) = quarantine(summary["run_id"]).values()
    assert "nested deeper than 64 levels" in reason


# ---------------------------------------------------------------- 11: one bad field


@pytest.mark.parametrize("bad", ['{"sentiment": "neutral", "a\\u0000b": 1}',
                                 '{"sentiment": "neutral", "": 1}',
                                 '{"sentiment": "neutral", "n": 123456789012345678901234567890}'])
def test_one_bad_value_in_a_sqlite_batch_quarantines_only_its_record(tmp_path, llm_server, bad):
    rows = [{"id": f"r{i}", "text": "t", "expected": "neutral", "reply": NEUTRAL}
            for i in range(10)]
    rows[4]["reply"] = bad
    folder = tmp_path / "p"
    path = write_pipeline(folder, rows=rows, base_url=llm_server.base_url,
                          transform={"output_schema": {"type": "object"}},
                          load={"destination": "sqlite://out/dest.db", "table": "scores"})
    summary = run_json(path)
    if '""' in bad:  # SQLite takes an empty column name: nothing to refuse
        assert summary["records"]["loaded"] == 10
        return
    assert summary["records"] == {"extracted": 10, "loaded": 9, "quarantined": 1, "skipped": 0}
    (record_id, reason), = quarantine(summary["run_id"]).items()
    assert record_id == "r4" and reason
    with sqlite3.connect(folder / "out" / "dest.db") as db:
        assert db.execute("SELECT count(*) FROM scores").fetchone() == (9,)


@pytest.mark.parametrize("bad", ['{"sentiment": "neutral", "a\\u0000b": 1}',
                                 '{"sentiment": "neutral", "": 1}',
                                 '{"sentiment": "neutral", "n": 123456789012345678901234567890}'])
def test_one_bad_value_in_a_postgres_batch_quarantines_only_its_record(
        tmp_path, llm_server, pg_database, bad):
    rows = [{"id": f"r{i}", "text": "t", "expected": "neutral", "reply": NEUTRAL}
            for i in range(10)]
    rows[4]["reply"] = bad
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          transform={"output_schema": {"type": "object"}},
                          load={"destination": pg_database.dsn, "table": "scores"})
    summary = run_json(path)
    if "1234567890" in bad:  # PostgreSQL holds it (numeric): nothing to refuse
        assert summary["records"]["loaded"] == 10
        return
    assert summary["records"] == {"extracted": 10, "loaded": 9, "quarantined": 1, "skipped": 0}
    (record_id, reason), = quarantine(summary["run_id"]).items()
    assert record_id == "r4" and reason


# ---------------------------------------------------------------- 12: dict-method names


def test_columns_named_like_dict_methods_render_as_their_values(tmp_path, llm_server):
    names = ["items", "values", "keys", "pop", "update", "clear", "get", "copy"]
    rows = [{"id": "r1", **{name: f"<{name}-value>" for name in names},
             "expected": "neutral", "reply": NEUTRAL}]
    prompt = " ".join("{{ input.%s }}" % name for name in names) + "\nreply: {{ input.reply }}\n"
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url, prompt=prompt)
    summary = run_json(path)
    assert summary["records"]["loaded"] == 1
    (body,) = llm_server.requests
    assert " ".join(f"<{name}-value>" for name in names) in body["messages"][-1]["content"]


# ---------------------------------------------------------------- 13: render budget


@pytest.mark.parametrize("template", [
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ 'x' * 3000000000 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
    "{{ 'x'|center(3000000000) }}",
])
def test_a_template_that_would_exhaust_the_machine_is_one_line_and_exit_2(
        tmp_path, llm_server, template):
    rows = [{"id": f"r{i}", **GOOD} for i in range(3)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          prompt=template + "\nreply: {{ input.reply }}\n")
    started = time.monotonic()
    proc = loom("--run", str(path), "--json", memory_mb=3000, timeout=90)
    assert time.monotonic() - started < 60
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc)
    assert error.startswith("error: ") and "template" in error
    assert llm_server.count == 0


def test_sigterm_stops_a_slow_render(tmp_path, llm_server, loom_home):
    from tests.support.loom_process import start_loom

    rows = [{"id": f"r{i}", **GOOD} for i in range(3)]
    template = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                "{% endfor %}")
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          prompt=template + "\nreply: {{ input.reply }}\n")
    proc = start_loom("--run", str(path), "--json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the run is recorded: it is rendering then
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if store_rows(loom_home, "SELECT count(*) FROM pipeline_runs")[0][0]:
                break
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    time.sleep(1)
    sent = time.monotonic()
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert time.monotonic() - sent < 10
    assert "Traceback" not in err, err[-3000:]
    assert statuses(loom_home) != ["running"]  # recorded as stopped, not left running


# ---------------------------------------------------------------- 14, duplicate keys


BILLION_LAUGHS = """\
name: laughs
params:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
extract: {source: "csv://reviews.csv"}
transform: {prompt: prompt.j2, provider: openai, model: gpt-4o-mini}
load: {destination: "jsonl://out.jsonl"}
"""


def test_billion_laughs_yaml_is_one_line_in_bounded_memory(tmp_path):
    (tmp_path / "pipeline.yaml").write_text(BILLION_LAUGHS, encoding="utf-8")
    (tmp_path / "prompt.j2").write_text("x", encoding="utf-8")
    (tmp_path / "reviews.csv").write_text("id\n1\n", encoding="utf-8")
    started = time.monotonic()
    proc = loom("validate", str(tmp_path / "pipeline.yaml"), memory_mb=1500, timeout=60)
    assert time.monotonic() - started < 20
    assert proc.returncode == 2
    assert "alias" in one_line_error(proc)


def test_a_few_aliases_still_work(tmp_path):
    text = BILLION_LAUGHS.split("  c:")[0] + BILLION_LAUGHS.split("&i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n")[1]
    (tmp_path / "pipeline.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "prompt.j2").write_text("x", encoding="utf-8")
    (tmp_path / "reviews.csv").write_text("id\n1\n", encoding="utf-8")
    proc = loom("validate", str(tmp_path / "pipeline.yaml"))
    assert proc.returncode == 0, proc.stderr


def test_a_duplicate_yaml_key_names_both_lines(tmp_path):
    (tmp_path / "prompt.j2").write_text("x", encoding="utf-8")
    (tmp_path / "reviews.csv").write_text("id\n1\n", encoding="utf-8")
    (tmp_path / "pipeline.yaml").write_text(
        "name: one\n"
        "extract: {source: 'csv://reviews.csv'}\n"
        "transform:\n"
        "  prompt: prompt.j2\n"
        "  provider: openai\n"
        "  model: gpt-4o-mini\n"
        "  model: gpt-4o\n"
        "load: {destination: 'jsonl://out.jsonl'}\n", encoding="utf-8")
    proc = loom("validate", str(tmp_path / "pipeline.yaml"))
    assert proc.returncode == 2
    error = one_line_error(proc)
    assert "transform.model" in error and "line 6" in error and "line 7" in error, error


# ---------------------------------------------------------------- CLI integers


@pytest.mark.parametrize("args", [
    ("quarantine", "show", "99999999999999999999999"),
    ("quarantine", "approve", "99999999999999999999999"),
    ("quarantine", "discard", "-99999999999999999999999"),
    ("quarantine", "list", "--limit", "99999999999999999999999"),
    ("runs", "--limit", "99999999999999999999999"),
])
def test_a_huge_integer_argument_is_one_line(args):
    proc = loom(*args)
    assert proc.returncode == 2
    one_line_error(proc)


def test_a_huge_limit_on_a_run_is_one_line(tmp_path, llm_server):
    path = write_pipeline(tmp_path / "p", rows=[{"id": "r1", **GOOD}], base_url=llm_server.base_url)
    for flag in ("--limit", "--estimate"):
        proc = loom("--run", str(path), flag, "99999999999999999999999")
        assert proc.returncode == 2, proc.stderr
        one_line_error(proc)


# ---------------------------------------------------------------- 16: NaN and Infinity


@pytest.mark.parametrize("destination", ["jsonl://out/results.jsonl", "json://out/results.json"])
def test_nan_and_infinity_in_an_answer_are_quarantined_and_outputs_stay_json(
        tmp_path, llm_server, destination):
    rows = [{"id": "ok", **GOOD},
            {"id": "nan", "text": "t", "expected": "neutral",
             "reply": '{"sentiment": "neutral", "score": NaN}'},
            {"id": "inf", "text": "t", "expected": "neutral",
             "reply": '{"sentiment": "neutral", "score": -Infinity}'}]
    folder = tmp_path / "p"
    path = write_pipeline(folder, rows=rows, base_url=llm_server.base_url,
                          load={"destination": destination})
    summary = run_json(path)
    assert summary["records"] == {"extracted": 3, "loaded": 1, "quarantined": 2, "skipped": 0}
    reasons = quarantine(summary["run_id"])
    assert set(reasons) == {"nan", "inf"}
    assert all("NaN" in r or "Infinity" in r for r in reasons.values()), reasons
    out = folder / destination.split("://")[1]

    def refuse(name: str) -> None:
        raise ValueError(name)

    text = out.read_text(encoding="utf-8")
    if destination.startswith("jsonl"):
        for line in text.splitlines():
            json.loads(line, parse_constant=refuse)
    else:
        json.loads(text, parse_constant=refuse)


def test_nan_in_a_record_never_reaches_a_json_output(tmp_path, llm_server):
    lines = [json.dumps({"id": "ok", **GOOD}),
             '{"id": "nan", "text": "t", "x": NaN, "expected": "neutral", "reply": '
             + json.dumps(NEUTRAL) + "}"]
    folder = tmp_path / "p"
    path = jsonl_pipeline(folder, lines, llm_server.base_url,
                          load={"destination": "jsonl://out/results.jsonl",
                                "fields": {"id": "id", "x": "input.x"}})
    summary = run_json(path)
    assert summary["records"]["loaded"] == 1 and summary["records"]["quarantined"] == 1
    for line in (folder / "out" / "results.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


# ---------------------------------------------------------------- SQL query templates


@pytest.mark.parametrize("query", [
    "{% filter replace('Q', params.who) %}SELECT * FROM t WHERE id = 'Q'{% endfilter %}",
    "{% set q %}SELECT * FROM t WHERE id = '{{ params.who }}'{% endset %}{{ q }}",
    "{% macro m() %}{{ params.who }}{% endmacro %}SELECT * FROM t WHERE id = {{ m() }}",
    "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}SELECT * FROM t",
])
def test_sql_template_blocks_that_emit_text_are_refused(tmp_path, query):
    folder = tmp_path / "p"
    folder.mkdir()
    with sqlite3.connect(folder / "src.db") as db:
        db.execute("CREATE TABLE t (id TEXT, text TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [("a", "x"), ("b", "y")])
    path = write_pipeline(folder, extract={"source": "sqlite://src.db", "query": query,
                                           "id_field": "id"},
                          params={"who": "x' OR '1'='1"})
    proc = loom("validate", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "query" in one_line_error(proc)


# ---------------------------------------------------------------- 19: literal secrets


def _every_text_in_the_store(loom_home: Path) -> str:
    uri = (loom_home / "loom.db").resolve().as_uri() + "?mode=ro"
    texts = []
    with sqlite3.connect(uri, uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                texts.extend(f"{table}: {value}" for value in row if value is not None)
    return "\n".join(map(str, texts))


def test_literal_secrets_are_redacted_in_every_table(tmp_path, llm_server, loom_home):
    key, password = "sk-LITERAL-9f8e7d6c5b4a3210", "hunter2-PASSWORD-77"
    path = write_pipeline(tmp_path / "p", rows=[{"id": f"r{i}", **GOOD} for i in range(3)],
                          base_url=llm_server.base_url, transform={"api_key": key})
    summary = run_json(path)
    assert summary["records"]["loaded"] == 3
    run_json(path, "--set", f"load.destination=postgres://loom:{password}@127.0.0.1:9/db",
             "--set", "load.table=t", expect=1)
    for proc in (loom("runs", "--json"), loom("quarantine", "list", "--json")):
        assert key not in proc.stdout and password not in proc.stdout
    resumed = loom("--run", str(path), "--resume")  # (nothing was read: nothing to resume)
    assert resumed.returncode == 2
    one_line_error(resumed)
    stored = _every_text_in_the_store(loom_home)
    leaks = sorted({line.split(":")[0] for line in stored.splitlines()
                    if key in line or password in line})
    assert leaks == []
    for path in loom_home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and password.encode() not in data, path


def test_a_resume_asks_again_for_a_secret_it_did_not_store(tmp_path, llm_server, capsys,
                                                           loom_home):
    from core import cli
    from tests.integration.test_resume import cancel_after, rows

    llm_server.latency_s = 0.02
    key = "sk-SET-LITERAL-0a1b2c3d4e5f"
    path = write_pipeline(tmp_path / "p", rows=rows(100), base_url=llm_server.base_url,
                          transform={"concurrency": 2})
    first = cancel_after(path, 10, set=[f"transform.api_key={key}"])
    assert key not in _every_text_in_the_store(loom_home)

    code = cli.main(["--run", str(path), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--set transform.api_key" in err and key not in err

    code = cli.main(["--run", str(path), "--resume", "--json", "--set", f"transform.api_key={key}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["run_id"] == first.run_id
    assert key not in _every_text_in_the_store(loom_home)
