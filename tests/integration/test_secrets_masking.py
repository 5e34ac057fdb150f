"""Siblings of tests/adversary/test_secret_attacks.py: the same masker must cover the
Anthropic provider, a key escaped twice (inside the model's own JSON), the `--record`
cassette, `loom runs --json`, and a judge's calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.adversary.hostile import ROOT
from tests.adversary.test_secret_attacks import (ROWS, Echo, completion, dotnet_json,
                                                 places_holding, run_json)
from tests.pipelines import write_pipeline

PLUS_KEY = "sk-ant-api03-Qm9vYmFy+ZW52aXJv+bm1lbnQ"


def loom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loom_tui.cli", *args], cwd=ROOT,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=60,
                          check=False)


def test_an_anthropic_environment_key_escaped_in_a_401_is_masked_everywhere(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLUS_KEY)

    def handler(headers, raw):
        return 401, dotnet_json({"type": "error", "error": {
            "type": "authentication_error",
            "message": "invalid x-api-key: " + headers.get("x-api-key", "")}})

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"provider": "anthropic", "api_key": None,
                                             "model": "claude-haiku-4-5", "max_retries": 0},
                                  evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
    assert code == 1, err
    assert "invalid x-api-key" in out
    runs = loom("runs", "--json")
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(PLUS_KEY, home, tmp_path / "p", out, err, runs.stdout, runs.stderr)
    assert not leaks, f"the Anthropic key is in {leaks}"


def test_a_key_escaped_inside_the_models_json_is_masked_in_the_output(tmp_path, monkeypatch):
    """The model's content is itself JSON, and it writes `+` as \\u002B: the transport's
    decoding leaves the escape, only parsing the answer reveals the key."""
    secret = "sk-proj-Qm9vYmFy+ZW52aXJvbm1lbnQ+a2V5"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def handler(headers, raw):
        seen = headers.get("authorization", "").replace("+", "\\u002B")
        content = '{"sentiment": "positive", "seen": "' + seen + '"}'
        return 200, json.dumps(completion(content)).encode()

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"provider": "openai", "api_key": None},
                                  evaluate={"evaluators": []})
        code, out, err = run_json(pipeline)
    assert code == 0, err
    home = Path(os.environ["LOOM_HOME"])
    written = (tmp_path / "p" / "out" / "results.jsonl").read_text()
    assert "Bearer ***" in written
    leaks = places_holding(secret, home, tmp_path / "p", out, err)
    assert not leaks, f"the API key is stored in {leaks}"


def test_a_literal_header_value_echoed_is_not_in_the_cassette(tmp_path):
    secret = "sk-helicone-cassette-8d2f0e"

    def handler(headers, raw):
        token = headers.get("helicone-auth", "").split(" ", 1)[-1]
        return 200, json.dumps(completion(json.dumps({"sentiment": "positive",
                                                       "seen": token}))).encode()

    with Echo(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"headers": {"Helicone-Auth": f"Bearer {secret}"}},
                                  evaluate={"evaluators": []})
        cassette = tmp_path / "p" / "cassette.jsonl"
        proc = subprocess.run([sys.executable, "-m", "loom_tui.cli", "--run", str(pipeline),
                               "--json", "--record", str(cassette)], cwd=ROOT,
                              env=os.environ.copy(), capture_output=True, text=True, timeout=120,
                              check=False)
    assert proc.returncode == 0, proc.stderr
    assert cassette.exists()
    home = Path(os.environ["LOOM_HOME"])
    leaks = places_holding(secret, home, tmp_path / "p", proc.stdout, proc.stderr,
                           skip=(pipeline,))
    assert not leaks, f"the header value is in {leaks}"


def test_a_judge_with_its_own_endpoint_masks_every_secret_of_the_run(tmp_path, monkeypatch):
    """A judge on an endpoint of its own (its api_key a ${NAME}) builds its own provider: it
    masks with the run's masker like the transform's, so a secret only the transform sends
    (a params value), quoted by the judge, is masked as well as the judge's own key."""
    secret = "jdg-Qm9vYmFy+ZW52aXJvbm1lbnQ"
    user = "eut-judged-5c1e9a7b3d"
    monkeypatch.setenv("JUDGE_KEY", secret)
    monkeypatch.setenv("END_USER_TOKEN", user)

    def transform(headers, raw):
        return 200, json.dumps(completion('{"sentiment": "positive"}')).encode()

    def judge(headers, raw):
        graded = {"score": 0.9, "confidence": 0.8,
                  "explanation": f"accurate; user {user}; you sent "
                                 + headers.get("authorization", ""),
                  "criteria_met": ["accurate"], "criteria_not_met": []}
        return 200, dotnet_json(completion(json.dumps(graded)))

    with Echo(transform) as server, Echo(judge) as judging:
        pipeline = write_pipeline(tmp_path / "p", rows=ROWS, base_url=server.base_url,
                                  prompt="Classify.\n{{ input.text }}\n",
                                  transform={"params": {"user": "${END_USER_TOKEN}"}},
                                  evaluate={"evaluators": [
                                      {"name": "judged", "type": "custom_criteria",
                                       "threshold": 0.5, "criteria": "Accurate sentiment",
                                       "base_url": judging.base_url,
                                       "api_key": "${JUDGE_KEY}"}]})
        code, out, err = run_json(pipeline)
        assert judging.requests, "the judge was not asked"
    assert code == 0, err
    home = Path(os.environ["LOOM_HOME"])
    for value in (secret, user):
        leaks = places_holding(value, home, tmp_path / "p", out, err)
        assert not leaks, f"{value} is in {leaks}"


async def test_a_workbench_sample_masks_a_resolved_secret_in_its_reasons(tmp_path, monkeypatch):
    """The workbench's sample run (Workspace.run_sample) shows each record's reason: a 500
    from a URL that carries `?key=${GATEWAY_KEY}` must not show the key."""
    from core.api import Workspace

    secret = "gwk-sample-7d1e0c5b9a3f"
    monkeypatch.setenv("GATEWAY_KEY", secret)

    def handler(headers, raw):
        return 500, json.dumps({"error": {"message": "upstream exploded"}}).encode()

    with Echo(handler) as server:
        path = write_pipeline(tmp_path / "p", rows=ROWS,
                              base_url=server.base_url + "?key=${GATEWAY_KEY}",
                              prompt="Classify.\n{{ input.text }}\n",
                              transform={"max_retries": 0}, evaluate={"evaluators": []})
        async with Workspace(tmp_path) as workspace:
            loaded = workspace.load(path)
            records = await workspace.preview(loaded, limit=2)
            warnings: list[str] = []
            results = await workspace.run_sample(loaded, records, warnings=warnings)
    reasons = [r.reason or "" for r in results]
    assert any("HTTP 500" in reason for reason in reasons), reasons
    assert not any(secret in text for text in (*reasons, *warnings)), reasons
