"""Database destinations with several runs committing at once: each `replace` must leave one
run's rows, never a mix of two (or one run's commit failing because the other created the table).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.connectors.registry import open_sink
from tests.pipelines import connector_spec


def spec(tmp_path: Path, url: str, name: str):
    return connector_spec(tmp_path / name, "jsonl://in.jsonl", url,
                          load={"table": "scores", "mode": "replace"}, extract={"id_field": "id"})


@pytest.mark.postgres
@pytest.mark.parametrize("table", ["existing", "missing"])
async def test_two_replaces_committing_at_once_leave_one_runs_rows(tmp_path, pg_database, table):
    if table == "existing":
        pg_database.sql("CREATE TABLE scores (id text, label text)")
        pg_database.sql("INSERT INTO scores VALUES ('old', 'x')")
    sinks = []
    for name in ("a", "b"):
        sink = open_sink(spec(tmp_path, pg_database.dsn, name))
        await sink.open(f"run-{name}")
        for start in range(0, 2000, 500):
            await sink.write([{"id": f"{name}{i:05d}", "label": name}
                              for i in range(start, start + 500)])
        sinks.append(sink)
    await asyncio.gather(*(sink.commit() for sink in sinks))
    labels = pg_database.rows("SELECT label, count(*) FROM scores GROUP BY label")
    assert labels in ([["a", "2000"]], [["b", "2000"]]), labels
