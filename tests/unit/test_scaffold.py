"""`loom init [FOLDER]`: a pipeline to start from, that validates and runs offline, written
without ever overwriting a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core import cli
from core.scaffold import SCHEMA_COMMENT, STARTER_FILES, pipeline_schema, scaffold


def test_init_writes_a_pipeline_that_validates_and_runs_offline(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "first"
    assert cli.main(["init", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in STARTER_FILES:
        assert (folder / name).is_file(), name
        assert f"wrote {folder / name}" in out
    assert cli.main(["validate", str(folder)]) == 0
    assert "ok ticket_router" in capsys.readouterr().out
    assert cli.main(["--run", str(folder / "pipeline.yaml"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "success"
    assert summary["records"] == {"extracted": 3, "loaded": 2, "quarantined": 1, "skipped": 0}
    assert (folder / "out" / "routed.csv").read_text().count("\n") == 3  # a header and 2 rows


def test_init_without_a_folder_writes_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init"]) == 0
    assert (tmp_path / "pipeline.yaml").is_file()
    assert cli.main(["validate", "pipeline.yaml", "--no-data"]) == 0


def test_init_never_overwrites(tmp_path: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tickets.csv").write_text("mine\n")
    assert cli.main(["init", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert err == (f"error: loom init: {tmp_path / 'data' / 'tickets.csv'} already exists: "
                   "nothing written (choose another folder, or move them away)\n")
    assert (tmp_path / "data" / "tickets.csv").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "tickets.csv"]
    assert cli.main(["init", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    assert cli.main(["init", str(tmp_path / "again")]) == 2
    assert "(and 3 more of its files)" in capsys.readouterr().err


def test_the_first_line_points_editors_at_the_schema(tmp_path: Path) -> None:
    schema = tmp_path / "schema" / "pipeline.schema.json"
    schema.parent.mkdir()
    schema.write_text("{}")
    scaffold(tmp_path / "p", schema=schema)
    first = (tmp_path / "p" / "pipeline.yaml").read_text().splitlines()[0]
    assert first == f"{SCHEMA_COMMENT}{schema.resolve()}"


def test_the_shipped_schema_when_there_is_one(tmp_path: Path) -> None:
    scaffold(tmp_path)
    first = (tmp_path / "pipeline.yaml").read_text().splitlines()[0]
    shipped = pipeline_schema()
    if shipped is None:  # a Loom that ships no schema writes no pointer to one
        assert not first.startswith(SCHEMA_COMMENT)
    else:
        assert first == f"{SCHEMA_COMMENT}{shipped}" and os.path.isabs(shipped)
