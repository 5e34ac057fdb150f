"""The servers the tests start for themselves: a missing PostgreSQL fails, it is never skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
