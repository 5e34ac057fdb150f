"""Attacks on "a good destination is never damaged"."""

from __future__ import annotations

import hashlib
import sqlite3

from tests.adversary.hostile import Hostile, loom, openai_error
from tests.pipelines import reply, write_pipeline


def test_a_failed_run_leaves_a_sqlite_replace_destination_byte_for_byte(tmp_path):
    """Guarantee 3: a failed run leaves a `replace` destination byte for byte as it was (SQLite
    included). A user's SQLite database in the default rollback-journal mode, and a run whose
    key is refused on the first call (failed, exit 1, nothing loaded): the run's sink switches
    the database to `PRAGMA journal_mode = WAL` for good (file header bytes 18-19), so its
    checksum changes and it now needs -wal/-shm files beside it (a reader without write
    access to the folder can no longer open it). core/connectors/sqlite.py sets WAL on the
    destination when it opens it."""
    def handler(n, body):
        return openai_error(401, "Incorrect API key provided", "invalid_request_error",
                            "invalid_api_key")

    rows = [{"id": f"r{i}", "text": f"review {i}", "reply": reply("positive"),
             "expected": "positive"} for i in range(10)]
    with Hostile(handler) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=rows, base_url=server.base_url,
                                  load={"destination": "sqlite://out/db.sqlite",
                                        "table": "results", "mode": "replace"})
        out = tmp_path / "p" / "out"
        out.mkdir()
        with sqlite3.connect(out / "db.sqlite") as db:
            db.execute("CREATE TABLE results (id TEXT PRIMARY KEY, sentiment TEXT)")
            db.execute("INSERT INTO results VALUES ('old', 'x')")
        db.close()
        before = hashlib.sha256((out / "db.sqlite").read_bytes()).hexdigest()
        code, summary, err = loom("--run", str(pipeline), "--json")
    assert code == 1 and summary["status"] == "failed", err
    after = hashlib.sha256((out / "db.sqlite").read_bytes()).hexdigest()
    assert after == before, "the failed run changed the destination database file"
