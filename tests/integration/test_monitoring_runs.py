"""Monitoring over real runs: alerts fired and not fired, shown, stored and posted to Slack."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core import cli
from core.store import Store
from tests.pipelines import reply, write_csv, write_pipeline
from tests.support.webhook_server import WebhookServer

LABELS = ["positive", "negative", "neutral"]


def rows(count: int = 6, *, wrong: set[int] = frozenset(), tag: str = "") -> list[dict[str, str]]:
    out = []
    for i in range(count):
        expected = LABELS[i % 3]
        answer = LABELS[(i + 1) % 3] if i in wrong else expected
        out.append({"id": f"r{i:04d}", "text": f"review {i} {tag}", "expected": expected,
                    "reply": reply(answer)})
    return out


def run(capsys: pytest.CaptureFixture[str], pipeline: Any, *args: str,
        expect: int = 0) -> tuple[dict[str, Any], str]:
    code = cli.main(["--run", str(pipeline), "--json", *args])
    out, err = capsys.readouterr()
    assert code == expect, err
    return json.loads(out), " ".join(err.split())  # rich wraps stderr at the terminal width


def cli_out(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(list(args)) == 0
    return capsys.readouterr().out


def stored_alerts(run_id: str) -> list[Any]:
    async def go() -> list[Any]:
        async with await Store.open() as store:
            return await store.list_alerts(run_id=run_id)

    return asyncio.run(go())


def test_a_score_drop_fires_after_good_runs_and_shows_in_loom_runs(tmp_path, llm_server, capsys):
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=rows(), base_url=llm_server.base_url,
                              monitoring={"score_drop": 0.2, "min_history": 2})
    first, _ = run(capsys, pipeline)
    second, _ = run(capsys, pipeline)
    assert first["alerts"] == [] and second["alerts"] == []

    write_csv(folder / "reviews.csv", rows(wrong={0, 1, 2}))  # half the answers are now wrong
    third, _ = run(capsys, pipeline)
    (alert,) = third["alerts"]
    assert alert["type"] == "score_degradation" and alert["severity"] == "warning"
    assert alert["message"] == ("matches: mean score 0.500 is 50.0% below its trailing mean "
                                "1.000 over the last 2 runs (score_drop 20%)")
    assert alert["details"]["evaluator"] == "matches" and alert["notified"] is False
    assert alert["id"] is not None

    history = {r["run_id"]: r for r in json.loads(cli_out(capsys, "runs", "--json"))}
    assert history[first["run_id"]]["alerts"] == []
    (listed,) = history[third["run_id"]]["alerts"]
    assert listed["message"] == alert["message"] and listed["id"] == alert["id"]

    table = cli_out(capsys, "runs")
    assert "alerts" in table.splitlines()[0]
    assert f"{third['run_id']}  score_degradation  matches: mean score 0.500" in table
    (row,) = stored_alerts(third["run_id"])
    assert row.alert_type == "score_degradation" and row.actual_value == 0.5


def test_no_score_alert_while_scores_hold(tmp_path, llm_server, capsys):
    folder = tmp_path / "p"
    pipeline = write_pipeline(folder, rows=rows(wrong={0}), base_url=llm_server.base_url,
                              monitoring={"score_drop": 0.2, "min_history": 1,
                                          "min_mean_score": 0.5})
    run(capsys, pipeline)
    write_csv(folder / "reviews.csv", rows(wrong={1}, tag="again"))  # as good as before
    summary, _ = run(capsys, pipeline)
    assert summary["alerts"] == []
    assert "alerts" not in cli_out(capsys, "runs").split("\n", 1)[1]


def test_a_cost_spike_fires_when_the_model_gets_dearer(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows(), base_url=llm_server.base_url,
                              monitoring={"cost_spike_factor": 3, "min_history": 2})
    for _ in range(2):
        summary, _ = run(capsys, pipeline, "--no-cache")
        assert summary["alerts"] == []
    # The loopback server's model costs what the pipeline says (tests.pipelines.LOOPBACK_PRICE):
    # gpt-4o's list price makes it dearer.
    summary, _ = run(capsys, pipeline, "--no-cache", "--set", "transform.model=gpt-4o",
                     "--set", "transform.price={input: 2.5, output: 10.0}")
    (alert,) = summary["alerts"]
    assert alert["type"] == "cost_spike" and alert["details"]["basis"] == "per_record"
    assert alert["message"].startswith("cost per record $")
    assert "× its trailing mean $" in alert["message"]
    assert alert["actual"] > 3 * alert["details"]["trailing_mean"]
    # The cheap model again: no spike against a window that now holds the dear run.
    summary, _ = run(capsys, pipeline, "--no-cache")
    assert summary["alerts"] == []


def test_latency_sla_fired_and_not_fired(tmp_path, llm_server, capsys):
    llm_server.latency_s = 0.05  # every answer takes at least 50 ms
    pipeline = write_pipeline(tmp_path / "p", rows=rows(), base_url=llm_server.base_url,
                              monitoring={"latency_p95_s": 0.01})
    summary, _ = run(capsys, pipeline, "--no-cache")
    (alert,) = summary["alerts"]
    assert alert["type"] == "latency_sla" and alert["threshold"] == 0.01
    assert alert["actual"] >= 0.05
    summary, _ = run(capsys, pipeline, "--no-cache", "--set", "monitoring.latency_p95_s=30")
    assert summary["alerts"] == []


def test_a_partial_run_raises_a_rejection_rate_alert(tmp_path, llm_server, capsys):
    pipeline = write_pipeline(tmp_path / "p", rows=rows(wrong={0, 1}), base_url=llm_server.base_url,
                              evaluate={"max_rejection_rate": 0.2})
    summary, _ = run(capsys, pipeline, expect=3)
    assert summary["status"] == "partial"
    (alert,) = summary["alerts"]
    assert (alert["type"], alert["severity"]) == ("rejection_rate", "error")


def test_alerts_are_posted_to_slack(tmp_path, llm_server, capsys, monkeypatch):
    with WebhookServer() as hook:
        monkeypatch.setenv("SLACK_WEBHOOK", hook.url)
        pipeline = write_pipeline(tmp_path / "p", rows=rows(wrong={0}), base_url=llm_server.base_url,
                                  monitoring={"min_mean_score": 0.9,
                                              "notify": {"slack_webhook": "${SLACK_WEBHOOK}"}})
        summary, err = run(capsys, pipeline)
    assert "warning" not in err
    (alert,) = summary["alerts"]
    assert alert["notified"] is True
    (post,) = hook.posts
    assert post["path"] == "/services/T000/B000/XXXX"
    assert post["json"]["text"].splitlines() == [
        f"Loom: test_pipeline run {summary['run_id']} (success) raised 1 alert",
        "• [warning] score_degradation: matches: mean score 0.833 is below min_mean_score 0.900"]
    (row,) = stored_alerts(summary["run_id"])
    assert row.notification_channel == "slack" and row.notification_sent is True
    assert row.notification_sent_at is not None


def test_a_failing_webhook_is_a_warning_never_a_failed_run(tmp_path, llm_server, capsys, monkeypatch):
    with WebhookServer(status=403) as hook:
        monkeypatch.setenv("SLACK_WEBHOOK", hook.url)
        pipeline = write_pipeline(tmp_path / "p", rows=rows(wrong={0}), base_url=llm_server.base_url,
                                  monitoring={"min_mean_score": 0.9,
                                              "notify": {"slack_webhook": "${SLACK_WEBHOOK}"}})
        summary, err = run(capsys, pipeline)
    assert summary["status"] == "success"
    assert len(hook.posts) == 1
    assert "warning: alerts not posted to Slack: the webhook answered 403 (invalid_token)" in err
    assert summary["alerts"][0]["notified"] is False
    (row,) = stored_alerts(summary["run_id"])
    assert row.notification_channel == "slack" and row.notification_sent is False


def test_an_unreachable_webhook_or_a_missing_secret_is_a_warning(tmp_path, llm_server, capsys,
                                                                 monkeypatch):
    pipeline = write_pipeline(tmp_path / "p", rows=rows(wrong={0}), base_url=llm_server.base_url,
                              monitoring={"min_mean_score": 0.9,
                                          "notify": {"slack_webhook": "${SLACK_WEBHOOK}",
                                                     "timeout_s": 2}})
    monkeypatch.delenv("SLACK_WEBHOOK", raising=False)
    summary, err = run(capsys, pipeline)  # the secret is looked up only to post, never to run
    assert summary["status"] == "success" and len(summary["alerts"]) == 1
    assert ("warning: alerts not posted to Slack: monitoring.notify.slack_webhook: secret "
            "SLACK_WEBHOOK is not set") in err

    with WebhookServer() as hook:
        closed = hook.url
    monkeypatch.setenv("SLACK_WEBHOOK", closed)  # nobody listens there any more
    summary, err = run(capsys, pipeline)
    assert summary["status"] == "success"
    assert "warning: alerts not posted to Slack: ConnectError" in err
    assert "T000/B000/XXXX" not in err  # the webhook is a secret: never printed
