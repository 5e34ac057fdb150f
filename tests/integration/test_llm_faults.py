"""Whole runs through `loom --run` against the loopback LLM server when things go wrong or
cost money: the response cache, 429s with Retry-After, 5xx, timeouts, truncated bodies, resets,
adaptive concurrency, the budget, the Anthropic wire format and `--estimate`.

Fault rates are drawn from the server's seeded generator, so every run of a test sees the same
faults; nothing here asserts on time.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from core import cli
from tests.pipelines import read_jsonl, reply, write_pipeline

LABELS = ["positive", "negative", "neutral"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith(("{", "[")) else {}), err


def rows_for(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i:04d}", "text": f"review number {i}", "expected": LABELS[i % 3],
             "reply": reply(LABELS[i % 3])} for i in range(count)]


def history(home: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(home / "loom.db") as db:
        return db.execute(sql, params).fetchall()


def outputs(folder: Path) -> list[dict]:
    return sorted(read_jsonl(folder / "out" / "results.jsonl"), key=lambda row: row["id"])


def assert_accounted(summary: dict) -> None:
    records = summary["records"]
    assert records["extracted"] == records["loaded"] + records["quarantined"] + records["skipped"]


# ---------------------------------------------------------------- the response cache


def test_a_rerun_makes_no_call_costs_nothing_and_loads_the_same(tmp_path, llm_server, capsys,
                                                               loom_home):
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=rows_for(60), base_url=llm_server.base_url,
                              load={"destination": "jsonl://out/results.jsonl", "mode": "replace"})
    code, first, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert first["llm"]["calls"] == 60 and first["cost_usd"] > 0
    loaded_first = outputs(folder)

    code, again, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert llm_server.count == 60  # no call at all the second time
    assert again["cost_usd"] == 0 and again["llm"] == {**again["llm"], "calls": 0, "cache_hits": 60}
    assert again["tokens"] == {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0,
                               "reasoning": 0}
    assert outputs(folder) == loaded_first
    # The history says which answers came from the cache.
    cached = dict(history(loom_home, "SELECT run_id, SUM(cached) FROM record_results GROUP BY run_id"))
    assert cached == {first["run_id"]: 0, again["run_id"]: 60}
    costs = dict(history(loom_home, "SELECT run_id, cost_usd FROM pipeline_runs"))
    assert costs[again["run_id"]] == 0


@pytest.mark.parametrize("change", [
    ["--set", "transform.model=gpt-4.1-mini"],
    ["--set", "transform.temperature=0.4"],
    ["--set", "transform.max_tokens=77"],
    ["--set", "transform.seed=11"],
    ["--set", "transform.output_schema={type: object, required: [sentiment]}"],
    ["--set", "transform.provider=openai"],
    "base_url",
    "prompt",
])
def test_whatever_decides_the_answer_is_in_the_cache_key(tmp_path, llm_server, capsys, change,
                                                         monkeypatch):
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=rows_for(5), base_url=llm_server.base_url)
    assert run_cli(capsys, "--run", str(pipeline), "--json")[0] == 0
    if change == "base_url":
        change = ["--set", f"transform.base_url={llm_server.base_url.replace('127.0.0.1', 'localhost')}"]
    elif change == "prompt":
        (folder / "prompt.j2").write_text("Classify, please.\n{{ input.text }}\nreply: {{ input.reply }}\n")
        change = []
    elif "transform.provider=openai" in change:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        change = [*change, "--set", f"transform.base_url={llm_server.base_url}"]
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json", *change)
    assert code == 0, err
    assert summary["llm"]["cache_hits"] == 0
    assert llm_server.count == 10


def test_no_cache_asks_again_and_expired_answers_are_fetched_again(tmp_path, llm_server, capsys,
                                                                    loom_home):
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(8), base_url=llm_server.base_url)
    assert run_cli(capsys, "--run", str(pipeline), "--json")[0] == 0
    (created, expires), = history(loom_home, "SELECT MIN(created_at), MIN(expires_at) FROM llm_cache")
    assert expires[:10] > created[:10]  # ~/.loom cache.ttl_days (30 by default) is kept

    code, summary, _ = run_cli(capsys, "--run", str(pipeline), "--json", "--no-cache")
    assert summary["llm"] == {**summary["llm"], "calls": 8, "cache_hits": 0}
    assert llm_server.count == 16

    history(loom_home, "UPDATE llm_cache SET expires_at = '2001-01-01 00:00:00.000000'")
    code, summary, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    assert summary["llm"]["cache_hits"] == 0 and llm_server.count == 24
    code, summary, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    assert summary["llm"]["cache_hits"] == 8 and llm_server.count == 24


def test_the_cache_ttl_comes_from_the_loom_config(tmp_path, llm_server, capsys, loom_home):
    (loom_home / "config.yaml").write_text("cache:\n  ttl_days: 2\n", encoding="utf-8")
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(2), base_url=llm_server.base_url)
    assert run_cli(capsys, "--run", str(pipeline), "--json")[0] == 0
    ((days,),) = history(loom_home, "SELECT MIN(julianday(expires_at) - julianday(created_at)) "
                                    "FROM llm_cache")
    assert days == pytest.approx(2.0, abs=1e-6)


# ---------------------------------------------------------------- faults


def test_429s_honour_retry_after_and_cut_the_concurrency_for_everyone(tmp_path, llm_server,
                                                                      capsys, loom_home):
    llm_server.faults.rate_429 = 0.15
    llm_server.faults.retry_after_s = 0.05
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(150), base_url=llm_server.base_url,
                              transform={"concurrency": 16, "max_retries": 8})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert summary["records"]["loaded"] == 150
    llm = summary["llm"]
    assert llm["throttled"] > 0 and llm["retries"] >= llm["throttled"]
    assert llm["concurrency"]["configured"] == 16
    assert llm["concurrency"]["min"] < 16  # halved on the first 429
    assert llm_server.count == 150 + llm["retries"]
    row = history(loom_home, "SELECT throttled, retries, concurrency, concurrency_min, "
                             "concurrency_final FROM pipeline_runs")[0]
    assert row == (llm["throttled"], llm["retries"], 16, llm["concurrency"]["min"],
                   llm["concurrency"]["final"])
    code, runs, _ = run_cli(capsys, "runs", "--json")
    assert runs[0]["llm"] == {"retries": llm["retries"], "throttled": llm["throttled"],
                              "concurrency": llm["concurrency"]}


@pytest.mark.parametrize("fault,rate", [("500", 0.2), ("timeout", 0.1), ("malformed", 0.15),
                                        ("reset", 0.15)])
def test_transient_faults_at_10_to_20_percent_lose_nothing(tmp_path, llm_server, capsys, fault,
                                                           rate):
    setattr(llm_server.faults, f"rate_{fault}", rate)
    llm_server.faults.timeout_sleep_s = 5
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(120), base_url=llm_server.base_url,
                              transform={"concurrency": 16, "max_retries": 6, "timeout_s": 0.5})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    # A record whose every attempt drew the fault (7 in a row) is not processed: the run says
    # so (partial, exit 3) and keeps it for --resume. Nothing is lost either way.
    records = summary["records"]
    assert code == 0 or (code == 3 and records["skipped"] > 0 and "not processed" in
                         summary["status_reason"]), (err, summary.get("status_reason"), records)
    assert_accounted(summary)
    assert summary["records"]["loaded"] >= 0.95 * 120
    assert summary["llm"]["retries"] > 0
    assert len(read_jsonl(tmp_path / "p" / "out" / "results.jsonl")) == summary["records"]["loaded"]


def test_the_acceptance_mix_of_429_500_and_malformed_loads_at_least_95_percent(tmp_path, llm_server,
                                                                              capsys):
    faults = llm_server.faults
    faults.rate_429, faults.rate_500, faults.rate_malformed = 0.10, 0.05, 0.03
    faults.retry_after_s = 0.05
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(300), base_url=llm_server.base_url,
                              transform={"concurrency": 32, "max_retries": 6})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert_accounted(summary)
    assert summary["records"]["skipped"] == 0
    assert summary["records"]["loaded"] >= 285
    ids = [row["id"] for row in read_jsonl(tmp_path / "p" / "out" / "results.jsonl")]
    assert len(ids) == len(set(ids)) == summary["records"]["loaded"]


def test_a_record_whose_provider_still_fails_is_skipped_not_quarantined(tmp_path, llm_server, capsys,
                                                                        loom_home):
    # The endpoint failed, not the record: nobody should have to review it; --resume does it.
    llm_server.script(["500", "500", "500"])
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(1), base_url=llm_server.base_url,
                              transform={"max_retries": 2})
    code, summary, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    # Nothing loaded: the run failed (a partial run would have loaded something).
    assert code == 1 and summary["status"] == "failed"
    assert summary["records"] == {"extracted": 1, "loaded": 0, "quarantined": 0, "skipped": 1}
    assert "not processed" in summary["status_reason"] and "--resume" in summary["status_reason"]
    (reason,), = history(loom_home, "SELECT reason FROM record_results WHERE outcome = 'skipped'")
    assert "HTTP 500" in reason and "gave up after 3 attempts" in reason
    code, items, _ = run_cli(capsys, "quarantine", "list", "--json")
    assert items == []
    code, resumed, _ = run_cli(capsys, "--run", str(pipeline), "--resume", "--json")
    assert code == 0 and resumed["records"]["loaded"] == 1


# ---------------------------------------------------------------- budget


def test_a_tiny_budget_stops_the_run_cleanly_with_exit_3(tmp_path, llm_server, capsys, loom_home):
    budget = 0.0004  # a few dozen calls of gpt-4o-mini with this prompt
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(400), base_url=llm_server.base_url,
                              transform={"concurrency": 4, "max_tokens": 50},
                              budget={"max_cost_usd": budget})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 3, err
    assert summary["status"] == "partial" and "budget $0.0004 reached" in summary["status_reason"]
    assert_accounted(summary)
    records = summary["records"]
    assert 0 < records["loaded"] < 400 and records["skipped"] > 0 and records["quarantined"] == 0
    assert summary["cost_usd"] <= budget  # reservations keep it under, calls in flight included
    assert llm_server.count == summary["llm"]["calls"]
    assert len(read_jsonl(tmp_path / "p" / "out" / "results.jsonl")) == records["loaded"]
    reasons = history(loom_home, "SELECT DISTINCT reason FROM record_results WHERE outcome = 'skipped'")
    assert reasons and all("budget $0.0004 reached" in reason for (reason,) in reasons)
    (row,) = history(loom_home, "SELECT status, status_reason, budget_usd FROM pipeline_runs")
    assert row[0] == "partial" and "budget" in row[1] and row[2] == budget


def test_a_budget_for_a_model_without_a_price_warns_that_it_cannot_be_enforced(tmp_path, llm_server,
                                                                              capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(3), base_url=llm_server.base_url,
                              transform={"model": "local-llama"}, budget={"max_cost_usd": 0.01})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0
    assert summary["cost_usd"] is None and summary["records"]["loaded"] == 3
    assert err.count("budget.max_cost_usd cannot be enforced for model local-llama") == 1


# ---------------------------------------------------------------- Anthropic


def test_an_anthropic_pipeline_speaks_the_messages_api(tmp_path, llm_server, capsys, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")
    pipeline = write_pipeline(
        tmp_path / "p", rows=rows_for(12), base_url=llm_server.base_url,
        transform={"provider": "anthropic", "model": "claude-haiku-4-5", "api_key": None,
                   "base_url": llm_server.anthropic_base_url, "max_tokens": 64})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 0, err
    assert summary["records"]["loaded"] == 12
    assert summary["cost_by_model"]["claude-haiku-4-5"] > 0
    assert llm_server.count["/v1/messages"] == 12
    body = llm_server.requests[-1]
    # claude-haiku-4-5 takes native structured output: the schema, closed, in output_config.
    schema = body["output_config"]["format"]["schema"]
    assert schema["required"] == ["sentiment"] and schema["additionalProperties"] is False
    assert "tool_choice" not in body and body["max_tokens"] == 64
    headers = {k.lower(): v for k, v in llm_server.headers[-1].items()}
    assert headers["x-api-key"] == "sk-ant-test-0123456789" and headers["anthropic-version"]


# ---------------------------------------------------------------- --estimate


def test_estimate_projects_the_whole_run_without_loading_or_recording(tmp_path, llm_server,
                                                                      capsys):
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=rows_for(100), base_url=llm_server.base_url)
    code, estimate, err = run_cli(capsys, "--run", str(pipeline), "--estimate", "10", "--json")
    assert code == 0, err
    assert estimate["total_records"] == 100
    assert estimate["sample"]["records"] == 10 and estimate["sample"]["calls"] == 10
    projected = estimate["projected"]
    assert projected["calls"] == 100 and projected["cost_usd"] > 0
    assert projected["cost_usd"] == pytest.approx(estimate["sample"]["cost_usd"] * 10)
    assert projected["duration_s"] is not None
    assert llm_server.count == 10
    assert not (folder / "out").exists()
    assert run_cli(capsys, "runs", "--json")[1] == []

    code, summary, _ = run_cli(capsys, "--run", str(pipeline), "--json")
    # The run pays for the 90 records the sample did not cache: together, what was projected.
    assert summary["llm"]["cache_hits"] == 10
    assert summary["cost_usd"] + estimate["sample"]["cost_usd"] == \
        pytest.approx(projected["cost_usd"], rel=0.05)
    # Answers now cached still count at what they cost: the projection does not drop to $0.
    code, again, _ = run_cli(capsys, "--run", str(pipeline), "--estimate", "10", "--json")
    assert again["sample"]["cache_hits"] == 10 and llm_server.count == 100
    assert again["projected"]["cost_usd"] == pytest.approx(projected["cost_usd"])


def test_estimate_prints_a_projection_for_people(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows_for(40), base_url=llm_server.base_url)
    code = cli.main(["--run", str(pipeline), "--estimate", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "estimate from 4 of about 40 records" in out  # a CSV's quick count reads lines
    assert "projected" in out and "40 calls" in out


def test_llm_judges_with_their_own_endpoint_spend_the_same_budget(tmp_path, llm_server, capsys,
                                                                  loom_home):
    from tests.support.judging import judge_requests, judge_responder

    llm_server.responder = judge_responder(lambda body: {
        "score": 0.9, "confidence": 0.8, "explanation": "accurate", "criteria_met": ["label"],
        "criteria_not_met": []})
    other = llm_server.base_url.replace("127.0.0.1", "localhost")  # another endpoint: own client
    budget = 0.004
    pipeline = write_pipeline(
        tmp_path / "p", rows=rows_for(100), base_url=llm_server.base_url,
        transform={"concurrency": 2, "max_tokens": 50},
        evaluate={"evaluators": [{"name": "judged", "type": "custom_criteria",
                                  "criteria": "Accurate sentiment", "model": "gpt-4o",
                                  "base_url": other, "api_key": "judge-key", "max_tokens": 100,
                                  # a loopback server costs what the pipeline says: gpt-4o's
                                  # list price
                                  "price": {"input": 2.5, "output": 10.0}}]},
        budget={"max_cost_usd": budget})
    code, summary, err = run_cli(capsys, "--run", str(pipeline), "--json")
    assert code == 3, err
    assert summary["status"] == "partial" and "budget" in summary["status_reason"]
    assert_accounted(summary)
    assert summary["cost_by_stage"]["evaluate"] > summary["cost_by_stage"]["transform"]
    assert summary["cost_usd"] <= budget  # judge and transform calls reserved from one budget
    assert 0 < summary["records"]["loaded"] < 100
    assert len(judge_requests(llm_server)) == summary["records"]["loaded"]
    stages = dict(history(loom_home, "SELECT stage, COUNT(*) FROM record_results "
                                     "WHERE outcome = 'skipped' GROUP BY stage"))
    assert sum(stages.values()) == summary["records"]["skipped"]
