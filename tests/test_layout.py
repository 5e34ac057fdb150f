"""The architecture's one hard rule, checked: core never imports Textual or the TUI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("textual", "loom_tui", "textual_plotext")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_source_imports_nothing_from_textual_or_the_tui() -> None:
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


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
    importers = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "core").rglob("*.py")
                       if any(n.split(".")[0] == "airflow" for n in imported_modules(path)))
    assert importers == ["core/integrations/airflow.py"]


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line.strip() for line in ci.splitlines() if "pytest" in line and "pip install" in line)
    assert command in readme


# The workbench is an adapter over the facade: it reaches the engine through these only.
TUI_MAY_IMPORT = ("core.api", "core.events", "core.records")


def test_the_tui_imports_only_the_facade_the_events_and_the_records() -> None:
    offenders = []
    for path in sorted((ROOT / "loom_tui").rglob("*.py")):
        allowed = TUI_MAY_IMPORT + (("core.cli",) if path.name == "cli.py" and
                                    path.parent.name == "loom_tui" else ())
        for name in imported_modules(path):
            if (name == "core" or name.startswith("core.")) and name not in allowed:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
