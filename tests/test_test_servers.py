"""The servers the tests start for themselves: a missing PostgreSQL fails, it is never skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_postgresql_fails_the_tests_that_need_it(tmp_path):
    needs = tmp_path / "test_needs_postgres.py"
    needs.write_text("def test_uses_it(pg_database):\n    assert pg_database.name\n")
    env = {**os.environ, "CI": "true", "LOOM_TEST_PG_BINDIR": str(tmp_path / "no-postgres-here")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), str(needs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "1 error" in output and "skipped" not in output, output
    assert "this test needs PostgreSQL and none could be started" in output
    assert "PostgreSQL is not installed in LOOM_TEST_PG_BINDIR" in output


def test_the_throwaway_cluster_takes_passwords_over_tcp(postgres_cluster, pg_database):
    assert pg_database.rows("SELECT current_user") == [["loom"]]
    hba = postgres_cluster.psql("SELECT type, auth_method FROM pg_hba_file_rules ORDER BY line_number")
    assert "host|scram-sha-256" in hba  # TCP needs a password: auth failures are real


def _run_needing(tmp_path, fixture: str, ci: str) -> tuple[int, str]:
    needs = tmp_path / f"test_needs_{fixture}.py"
    needs.write_text(f"def test_uses_it({fixture}):\n    assert {fixture}.base_url\n")
    env = {**os.environ, "CI": ci, "LOOM_LITELLM_BIN": str(tmp_path / "no-litellm-here"),
           "LOOM_LLAMA_PYTHON": str(tmp_path / "no-llama-here")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), str(needs)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fixture", ["litellm_proxy", "llama_server"])
def test_a_missing_third_party_server_fails_under_ci(tmp_path, fixture):
    code, output = _run_needing(tmp_path, fixture, "true")
    assert code == 1 and "1 error" in output and "skipped" not in output, output
    assert "is not installed" in output and "tools/install_test_servers.sh" in output, output


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fixture", ["litellm_proxy", "llama_server"])
def test_a_missing_third_party_server_skips_on_a_developer_machine(tmp_path, fixture):
    code, output = _run_needing(tmp_path, fixture, "")
    assert code == 0 and "1 skipped" in output, output
    assert "tools/install_test_servers.sh" in output, output


def test_the_litellm_config_forwards_each_vendor_to_the_upstream_and_takes_additions():
    from tests.support.litellm_proxy import MASTER_KEY, UPSTREAM_KEY, model_entry, proxy_config
    from tests.support.llm_server import LLMServer

    upstream = LLMServer(port=4242)  # not started: only its URLs are read
    limited = model_entry("gpt-4o-mini", upstream, alias="gpt-4o-mini-limited", rpm=2)
    config = proxy_config(upstream, models=["gpt-4o-mini", "claude-opus-4-7"],
                          extra_models=[limited], router_settings={"routing_strategy": "usage-based-routing-v2"})
    entries = {entry["model_name"]: entry["litellm_params"] for entry in config["model_list"]}
    assert entries["gpt-4o-mini"] == {"model": "openai/gpt-4o-mini", "api_key": UPSTREAM_KEY,
                                      "api_base": "http://127.0.0.1:4242/v1"}
    # LiteLLM posts to {api_base}/v1/messages: an Anthropic base is the server's root.
    assert entries["claude-opus-4-7"]["model"] == "anthropic/claude-opus-4-7"
    assert entries["claude-opus-4-7"]["api_base"] == "http://127.0.0.1:4242"
    assert entries["gpt-4o-mini-limited"]["rpm"] == 2
    assert config["router_settings"] == {"num_retries": 0, "routing_strategy": "usage-based-routing-v2"}
    assert config["litellm_settings"]["drop_params"] is False  # refuse what the vendors refuse
    assert config["general_settings"]["master_key"] == MASTER_KEY
