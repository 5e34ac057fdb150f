"""Attacks on "a user error is one line, never a traceback" and on the YAML limits docs/explanation/guarantees.md
documents (aliases expand to at most 100,000 values)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversary.hostile import ROOT

SAMPLE = ROOT / "sample_pipelines" / "customer_sentiment"

# A YAML flow sequence nested 50,000 deep (100 kB): PyYAML's composer recurses per level.
DEEP = "[" * 50_000 + "]" * 50_000
# An integer of 5,000 digits: Python refuses to convert more than 4,300 from text.
HUGE_INT = "9" * 5_000

HOSTILE_VALUES = [pytest.param(DEEP, id="nested-50000-deep"),
                  pytest.param(HUGE_INT, id="int-of-5000-digits")]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loom_tui.cli", *args], cwd=ROOT,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=60)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-600:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-600:]


def sample(tmp_path: Path) -> Path:
    folder = tmp_path / "p"
    shutil.copytree(SAMPLE, folder)
    return folder


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_hostile_value_in_the_pipeline_yaml_is_one_line(tmp_path, value):
    """Promise 3 (bad YAML is one line, exit 2). `loom validate` of a pipeline.yaml whose
    `version:` is a sequence nested 50,000 deep, or an integer of 5,000 digits: Loom prints a
    Python traceback (RecursionError from PyYAML's composer; ValueError "Exceeds the limit
    (4300 digits) for integer string conversion" from its int constructor) and exits 1. The
    parse is guarded against yaml.YAMLError only (core/spec.py:548-550, around
    _parse_yaml's get_single_node / construct_document at :830-835). The same happens under
    `--run`."""
    folder = sample(tmp_path)
    path = folder / "pipeline.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(f"version: {value}\n" + "\n".join(
        line for line in text.splitlines() if not line.startswith("version:")) + "\n",
        encoding="utf-8")
    one_line_error(run("validate", str(folder)))


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_hostile_value_in_loom_home_config_yaml_is_one_line(tmp_path, value):
    """Promise 3. `$LOOM_HOME/config.yaml` holding `pricing: <a sequence nested 50,000 deep>`
    or `pricing: <an integer of 5,000 digits>`: `loom runs` (and every command that reads the
    config) prints a traceback and exits 1. core/config.py:93 calls yaml.safe_load and catches
    yaml.YAMLError and ValidationError only, not RecursionError or ValueError."""
    Path(os.environ["LOOM_HOME"], "config.yaml").write_text(f"pricing: {value}\n",
                                                             encoding="utf-8")
    one_line_error(run("runs"))


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_hostile_set_value_is_one_line(tmp_path, value):
    """Promise 3 (bad CLI args are one line). `loom validate PIPELINE --set
    extract.batch_size=<5,000 digits>` or `--set transform.params=<[ nested 50,000 deep>`:
    a traceback, exit 1. core/spec.py:579 parses a --set value with yaml.safe_load and falls
    back to the text on yaml.YAMLError only."""
    folder = sample(tmp_path)
    key = "extract.batch_size" if value == HUGE_INT else "transform.params"
    one_line_error(run("validate", str(folder), "--set", f"{key}={value}"))


def test_a_set_value_whose_aliases_expand_past_the_limit_is_refused(tmp_path):
    """Promise 1 (docs/explanation/guarantees.md: "YAML aliases may expand to at most 100,000 values (a "billion
    laughs" is one line, in bounded memory)"). A 286-byte `--set transform.params={a0: &a0
    [1,…×10], a1: &a1 [*a0 ×10], … a5}` expands to 1,111,110 values (nine levels would be a
    billion, and each request body is the params serialised in full): `loom validate`
    accepts it, exit 0. The pipeline file's parse counts aliases (core/spec.py:_check_expansion),
    but a --set value goes to plain yaml.safe_load (core/spec.py:579), which counts nothing."""
    parts = ["a0: &a0 [1,1,1,1,1,1,1,1,1,1]"]
    parts += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]
    bomb = "{" + ", ".join(parts) + "}"
    folder = sample(tmp_path)
    proc = run("validate", str(folder), "--set", f"transform.params={bomb}")
    assert proc.returncode == 2 and "100,000" in proc.stderr, (
        f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-400:]}")


@pytest.mark.parametrize("url", [
    pytest.param("postgresql://loom:pw-1234567@db.example:notaport/loom", id="port-not-a-number"),
    pytest.param("postgresql://loom:pw-1234567@[::1/loom", id="unclosed-ipv6-bracket"),
])
def test_a_malformed_store_url_is_one_line(tmp_path, monkeypatch, url):
    """Promise 3 (a user error is one line). `LOOM_STORE_URL` (or `storage.url`) with a port
    that is not a number, or an unclosed IPv6 bracket: `loom runs` prints a traceback
    (ValueError "invalid literal for int() with base 10" from SQLAlchemy's make_url) and exits
    1. The same mistake in a pipeline's postgres:// source is one line ("cannot connect: ...").
    core/store/engine.py:146-148 (StoreTarget.parse) catches ArgumentError only."""
    monkeypatch.setenv("LOOM_STORE_URL", url)
    one_line_error(run("runs"))
