"""Progress for machines: when stderr is not a terminal (cron, Airflow), a plain line at each
stage change and every LOOM_PROGRESS_INTERVAL_S seconds; data never becomes Rich markup."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest
from rich.console import Console

from core import cli
from core.events import Progress, RunStarted, RunWarning
from core.reporting import ProgressReporter, plain_progress_line, progress_interval
from tests.pipelines import reply, write_pipeline
from tests.support.fake_time import FakeTime


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=80), buffer


def progress(done: int, **kw) -> Progress:
    values = dict(run_id="run-1", extracted=100, transformed=done, evaluated=done, loaded=done,
                  quarantined=0, skipped=0, in_flight=4, elapsed_s=10.0, records_per_s=2.0,
                  cost_usd=0.0123, budget_usd=None, input_tokens=0, output_tokens=0,
                  llm_calls=done, cache_hits=0, latency_p50_s=None, latency_p95_s=None,
                  concurrency=4, total_hint=100)
    values.update(kw)
    return Progress(**values)


def started() -> RunStarted:
    return RunStarted(run_id="run-1", pipeline="reviews", pipeline_path="/p/pipeline.yaml",
                      started_at=datetime.now(timezone.utc), model="m", provider="openai",
                      prompt_hash="h", source="csv://in.csv", destination="jsonl://out.jsonl",
                      budget_usd=None)


def test_a_line_at_each_stage_change_and_every_interval() -> None:
    out, buffer = console()
    clock = FakeTime()
    reporter = ProgressReporter(out, show_progress=False, interval_s=30, clock=clock.clock)
    reporter(started())
    reporter(progress(0, extracted=0))  # reading: a new stage
    for second in range(1, 95):
        clock.now = float(second)
        reporter(progress(second))  # processing from the first: then every 30 s
    reporter(progress(95, waiting_s=12.0, waiting_reason="429 Retry-After"))
    lines = buffer.getvalue().splitlines()
    assert [line.split(": ", 1)[1].split(" · ")[0] for line in lines] == [
        "started", "reading", "processing", "processing", "processing", "processing", "waiting"]
    assert lines[3] == ("progress reviews run-1: processing · 31/100 records (31 loaded, 0 "
                        "quarantined, 0 skipped, 4 in flight) · 2.0 rec/s · $0.0123 so far · "
                        "ETA 34s · wait -")
    assert lines[-1].endswith("wait 12s (429 Retry-After)")


def test_the_line_says_what_is_unknown() -> None:
    line = plain_progress_line("p", progress(10, total_hint=None, records_per_s=0.0,
                                             cost_usd=None), "processing")
    assert "10/100+ records" in line and "ETA unknown" in line and "unknown so far" in line
    line = plain_progress_line("p", progress(600, extracted=4000, total_hint=4000,
                                             records_per_s=1.0), "processing")
    assert "ETA 0h56m" not in line and "ETA 56m40s" in line


def test_text_from_data_is_never_markup() -> None:
    out, buffer = console()
    reporter = ProgressReporter(out, show_progress=False, interval_s=None)
    reporter(RunWarning("run-1", "duplicate id '[bold red]R[/]' (a[1].csv:3)"))
    assert buffer.getvalue() == "warning: duplicate id '[bold red]R[/]' (a[1].csv:3)\n"


def test_the_interval_comes_from_the_environment() -> None:
    assert progress_interval({}) == 30.0
    assert progress_interval({"LOOM_PROGRESS_INTERVAL_S": "5"}) == 5.0
    assert progress_interval({"LOOM_PROGRESS_INTERVAL_S": "0"}) == 0.0
    assert progress_interval({"LOOM_PROGRESS_INTERVAL_S": "off"}) is None
    with pytest.raises(Exception, match="expected a number of seconds"):
        progress_interval({"LOOM_PROGRESS_INTERVAL_S": "soon"})


def test_a_headless_run_logs_plain_lines(tmp_path, llm_server, capsys, monkeypatch) -> None:
    llm_server.latency_s = 0.05
    rows = [{"id": f"r{i}", "text": "t", "expected": "positive", "reply": reply("positive")}
            for i in range(30)]
    path = write_pipeline(tmp_path / "p", rows=rows, base_url=llm_server.base_url,
                          transform={"concurrency": 2, "cache": False})
    monkeypatch.setenv("LOOM_PROGRESS_INTERVAL_S", "0.2")
    code = cli.main(["--run", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("progress test_pipeline ")]
    assert len(lines) >= 4 and lines == err.splitlines()
    assert ": started · csv://reviews.csv → jsonl://out/results.jsonl" in lines[0]
    assert any(": processing · " in line and "/30 records" in line and "ETA" in line
               for line in lines)
    assert ": finished success · 30 loaded, 0 quarantined, 0 skipped of 30" in lines[-1]

    monkeypatch.setenv("LOOM_PROGRESS_INTERVAL_S", "soon")
    code = cli.main(["--run", str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: LOOM_PROGRESS_INTERVAL_S='soon'")
    assert err.count("\n") == 1
