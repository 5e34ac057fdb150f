"""A key stored with `loom secrets set` authenticates a run, and its value is found nowhere:
not under $LOOM_HOME (the database's bytes included), not in the outputs, the --json summary
or anything the run printed. A missing key stops the run, exit 2, before any call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.pipelines import reply, write_pipeline
from tests.support.llm_server import LLMServer

ROOT = Path(__file__).resolve().parents[2]
LOOM = [sys.executable, "-c", "import sys; from loom_tui.cli import main; sys.exit(main())"]
SECRET = "sk-loom-acceptance-3f9a2c71d4e8b6a0"


def loom(*args: str, stdin: str | None = None, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*LOOM, *args], input=stdin.encode() if stdin is not None else None,
                          capture_output=True, cwd=ROOT, env=env or dict(os.environ), timeout=120)


def every_file_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"review {i}", "expected": "positive",
             "reply": reply("positive" if i % 5 else "negative")} for i in range(count)]


def test_a_keyring_secret_authenticates_a_run_and_is_stored_nowhere(tmp_path, file_keyring,
                                                                     loom_home):
    stored = loom("secrets", "set", "LOOM_LLM_KEY", stdin=SECRET + "\n")
    assert stored.returncode == 0, stored.stderr
    # The keyring's own file is elsewhere (a temp dir standing in for the desktop keyring).
    assert not any(SECRET.encode() in p.read_bytes() for p in every_file_under(loom_home))

    with LLMServer(api_key=SECRET) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(20), base_url=server.base_url,
                                  transform={"api_key": "${LOOM_LLM_KEY}"})
        run = loom("--run", str(pipeline), "--json")
        assert run.returncode == 0, run.stderr.decode()
        summary = json.loads(run.stdout)
        assert summary["records"] == {"extracted": 20, "loaded": 16, "quarantined": 4, "skipped": 0}
        assert server.count == 20  # every call carried the right key (else: 401, run failed)

        listed = [loom("runs", "--json"), loom("quarantine", "list", "--json")]

    assert all(p.returncode == 0 for p in listed)
    printed = run.stdout + run.stderr + b"".join(p.stdout + p.stderr for p in listed)
    assert SECRET.encode() not in printed

    files = every_file_under(loom_home)
    assert loom_home / "loom.db" in files
    for path in files + every_file_under(tmp_path / "p" / "out"):
        assert SECRET.encode() not in path.read_bytes(), path
    # What the history keeps is the placeholder.
    assert b"${LOOM_LLM_KEY}" in b"".join(p.read_bytes() for p in files)


def test_a_missing_secret_stops_the_run_with_exit_2_before_any_call(tmp_path, file_keyring):
    with LLMServer(api_key=SECRET) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(5), base_url=server.base_url,
                                  transform={"api_key": "${LOOM_NEVER_SET_KEY}"})
        run = loom("--run", str(pipeline), "--json")
        assert server.count == 0
    assert run.returncode == 2
    assert run.stdout == b""
    err = run.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: transform.api_key: secret LOOM_NEVER_SET_KEY is not set")
    assert "${LOOM_NEVER_SET_KEY}" not in err
    assert not (tmp_path / "p" / "out").exists()


def test_without_a_usable_keyring_the_environment_works_with_one_warning(tmp_path):
    env = {**os.environ, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
           "LOOM_LLM_KEY": SECRET}
    with LLMServer(api_key=SECRET) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows(3), base_url=server.base_url,
                                  transform={"api_key": "${LOOM_LLM_KEY}"})
        run = loom("--run", str(pipeline), "--json", env=env)
    assert run.returncode == 0, run.stderr
    err = run.stderr.decode()
    assert err.count("warning: no usable keyring") == 1
    assert "reading secrets from the environment instead" in err and "keyrings.alt" in err
    assert SECRET not in err + run.stdout.decode()
