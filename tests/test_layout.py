"""The architecture's rules, checked: core never imports Textual or the TUI (statically, by the
import contracts, and at run time); the README's test command is what CI runs, and the docs'
Getting started shows the README's set-up commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter] contracts: core never imports Textual or the
    workbench; the workbench reaches the engine through core.api, core.events and core.records;
    only the Airflow operator imports Airflow."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_engine_loads_no_textual_module() -> None:
    code = ("import sys, core.api, core.cli, core.engine; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'loom_tui')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_core_never_imports_airflow() -> None:
    # Airflow is an optional extra: only core/integrations/airflow.py may import it.
    code = ("import sys, core, core.api, core.cli, core.engine, core.sharding; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'airflow']; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line.strip() for line in ci.splitlines() if "pytest" in line and "pip install" in line)
    assert command in readme


def test_getting_started_shows_the_readmes_set_up_commands() -> None:
    # The docs' Getting started repeats the README's two set-up commands: both stay CI's.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    guide = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2
    for command in commands:
        assert command in guide
