"""The architecture's rules, checked: core never imports Textual or the TUI (statically, by the
import contracts, and at run time); each command imports only what it needs, so the command line
starts fast; the README's test command is what CI runs, and the docs' Getting started shows the
README's set-up commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


# What a command that does not run a pipeline has no use for: the engine, the store's models,
# the providers and templates, the workbench.
ENGINE = ("core.api", "core.engine", "core.processing", "core.spec", "core.llm", "core.prompts",
          "core.store.store", "core.store.models", "core.evaluate", "loom_tui.app")
LIBRARIES = ("sqlalchemy", "sqlmodel", "alembic", "aiosqlite", "jinja2", "httpx", "jsonschema",
             "genai_prices", "tiktoken", "textual", "keyring")


def modules_after(tmp_path: Path, *argv: str, cwd: Path = ROOT) -> set[str]:
    """The modules a fresh `loom ARGV…` (the console script's main) has imported when it ends."""
    report = tmp_path / "modules.json"
    code = ("import contextlib, io, json, sys; from loom_tui.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    try:\n        main(sys.argv[2:])\n    except SystemExit:\n        pass\n"
            "open(sys.argv[1], 'w').write(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code, str(report), *argv], cwd=cwd,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return set(json.loads(report.read_text()))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("argv", [["--help"], ["quarantine"], ["secrets"], ["runs", "--bad"],
                                  ["--run"]], ids=" ".join)
def test_parsing_the_command_line_imports_nothing_of_the_engine(tmp_path: Path,
                                                                 argv: list[str]) -> None:
    modules = modules_after(tmp_path, *argv)
    assert loaded(modules, ENGINE + LIBRARIES + ("core.store", "core.config", "pydantic", "rich",
                                                 "asyncio", "yaml")) == []


def test_loom_runs_reads_the_history_without_the_engine(tmp_path: Path) -> None:
    from core import cli

    assert cli.main(["init", str(tmp_path / "p")]) == 0
    assert cli.main(["--run", str(tmp_path / "p" / "pipeline.yaml")]) == 0
    modules = modules_after(tmp_path, "runs")
    # The SQLite store at head is read with sqlite3: no SQLAlchemy, no asyncio, and (with no
    # config.yaml) no pydantic either.
    assert loaded(modules, ENGINE + LIBRARIES + ("pydantic", "asyncio")) == []
    assert "core.store.history_reader" in modules and "sqlite3" in modules


def test_loom_validate_checks_without_the_run_engine_or_the_store(tmp_path: Path) -> None:
    modules = modules_after(tmp_path, "validate",
                            str(ROOT / "sample_pipelines" / "customer_sentiment"))
    assert "core.validation" in modules  # it did validate
    assert loaded(modules, ("core.api", "core.engine", "core.store.store", "core.store.models",
                            "sqlalchemy", "textual", "loom_tui.app")) == []


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
