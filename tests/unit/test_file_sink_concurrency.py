"""File sinks with other writers of the same file: commits that interleave, a lock someone else
holds, a commit token that must survive another run's append, staging files of dead runs.

Each sink here is a real sink on real files; "someone else" is a second sink on the same file
(in this process: flock locks belong to open files, so two sinks conflict as two processes do)
or a real process holding the lock.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.connectors.base import Sink
from core.connectors.files import leftover_staging
from core.connectors.registry import open_sink
from core.errors import DestinationBusy
from core.spec import LoadedSpec
from tests.pipelines import connector_spec

SCHEMES = ["jsonl", "json", "csv"]


def spec(folder: Path, scheme: str, **load: Any) -> LoadedSpec:
    return connector_spec(folder, "csv://seed.csv", f"{scheme}://out.{scheme}", load=load)


def ids(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return [json.loads(line)["record_id"] for line in
                path.read_text(encoding="utf-8").splitlines() if line]
    if path.suffix == ".json":
        return [row["record_id"] for row in json.loads(path.read_text(encoding="utf-8"))]
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["record_id"] for row in csv.DictReader(handle)]


def seed(path: Path) -> None:
    text = {".jsonl": '{"record_id": "old"}\n', ".json": '[{"record_id": "old"}]\n',
            ".csv": "record_id,label\nold,x\n"}[path.suffix]
    path.write_text(text, encoding="utf-8")


async def staged(loaded: LoadedSpec, run_id: str, rows: list[dict[str, Any]]) -> Sink:
    sink = open_sink(loaded)
    sink.notify = lambda message: None
    await sink.open(run_id)
    await sink.write(rows)
    return sink


async def publish(sink: Sink) -> str | None:
    token = await sink.prepare_commit()
    await sink.commit()
    return token


def hold(path: Path) -> subprocess.Popen[str]:
    """Another process that holds an exclusive flock on `path` until it is killed."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


# ---------------------------------------------------------------- the lost update


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_two_appends_whose_commits_interleave_keep_both(tmp_path: Path, scheme: str) -> None:
    loaded = spec(tmp_path, scheme, mode="append")
    out = tmp_path / f"out.{scheme}"
    seed(out)
    first = await staged(loaded, "run-a", [{"record_id": "a1", "label": "p"}])
    second = await staged(loaded, "run-b", [{"record_id": "b1", "label": "n"}])
    await first.prepare_commit()  # the first one is committing...
    other = asyncio.create_task(publish(second))  # ...when the second one commits
    await asyncio.sleep(0.3)
    await first.commit()
    await asyncio.wait_for(other, 10)
    assert sorted(ids(out)) == ["a1", "b1", "old"]


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_replace_waits_for_an_append_in_progress(tmp_path: Path, scheme: str) -> None:
    out = tmp_path / f"out.{scheme}"
    seed(out)
    appending = await staged(spec(tmp_path, scheme, mode="append"), "run-a", [{"record_id": "a1"}])
    replacing = await staged(spec(tmp_path, scheme, mode="replace"), "run-r", [{"record_id": "r1"}])
    await appending.prepare_commit()
    other = asyncio.create_task(publish(replacing))
    await asyncio.sleep(0.3)
    assert not other.done()  # it waits for the lock
    await appending.commit()
    await asyncio.wait_for(other, 10)
    assert ids(out) == ["r1"]  # the replace came second: only its rows


# ---------------------------------------------------------------- the lock


async def test_waiting_for_the_lock_is_said_and_bounded(tmp_path: Path) -> None:
    loaded = spec(tmp_path, "jsonl", lock_timeout_s=0.5)
    committing = await staged(loaded, "run-holder", [{"record_id": "h"}])
    await committing.prepare_commit()
    waiting = await staged(loaded, "run-waiter", [{"record_id": "w"}])
    notes: list[str] = []
    waiting.notify = notes.append
    started = time.monotonic()
    with pytest.raises(DestinationBusy) as caught:
        await waiting.prepare_commit()
    assert 0.4 < time.monotonic() - started < 5
    message = str(caught.value)
    assert "\n" not in message and "still locked after 0.5 s" in message
    assert "run-holder" in message and str(os.getpid()) in message
    assert len(notes) == 1 and "waiting for the lock on" in notes[0] and "run-holder" in notes[0]
    await waiting.abort()
    await committing.commit()
    assert ids(tmp_path / "out.jsonl") == ["h"]


async def test_a_lock_whose_holder_was_killed_does_not_block(tmp_path: Path) -> None:
    loaded = spec(tmp_path, "jsonl", lock_timeout_s=30)
    holder = hold(tmp_path / ".out.jsonl.loom.lock")
    kill(holder)
    sink = await staged(loaded, "run-1", [{"record_id": "1"}])
    started = time.monotonic()
    await publish(sink)
    assert time.monotonic() - started < 2
    assert ids(tmp_path / "out.jsonl") == ["1"]


# ---------------------------------------------------------------- did my commit publish?


@pytest.mark.parametrize("mode", ["append", "replace"])
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_the_commit_token_survives_another_runs_append(tmp_path: Path, scheme: str,
                                                            mode: str) -> None:
    out = tmp_path / f"out.{scheme}"
    seed(out)
    loaded = spec(tmp_path, scheme, mode=mode)
    token = await publish(await staged(loaded, "run-a", [{"record_id": "a1", "label": "p"},
                                                         {"record_id": "a2", "label": "q"}]))
    # Another run appends, with a new column (a CSV rewrites its old rows to pad them).
    await publish(await staged(spec(tmp_path, scheme, mode="append"), "run-b",
                               [{"record_id": "b1", "label": "n", "extra": "new"}]))
    resumed = open_sink(loaded)
    await resumed.open("run-a")
    assert await resumed.committed(token) is True
    await resumed.abort()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_commit_that_never_renamed_is_not_taken_for_published(tmp_path: Path,
                                                                      scheme: str) -> None:
    out = tmp_path / f"out.{scheme}"
    seed(out)
    loaded = spec(tmp_path, scheme, mode="append")
    rows = [{"record_id": "a1", "label": "p"}]
    unpublished = await staged(loaded, "run-a", rows)
    token = await unpublished.prepare_commit()
    await unpublished.abort()  # it died before the rename
    # Another run appends where the first one would have put its rows.
    await publish(await staged(loaded, "run-b", [{"record_id": "b1", "label": "p"}]))
    resumed = open_sink(loaded)
    await resumed.open("run-a")
    assert await resumed.committed(token) is False
    await resumed.abort()


# ---------------------------------------------------------------- staging files of the dead


async def test_staging_files_of_dead_runs_are_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    loaded = spec(tmp_path, "jsonl")
    dead = tmp_path / ".out.jsonl.loom-run-dead.tmp"
    dead.write_text('{"record_id": "lost"}\n', encoding="utf-8")
    dead_csv = tmp_path / ".out.jsonl.loom-run-dead.rows.tmp"
    dead_csv.write_text("", encoding="utf-8")
    live = tmp_path / ".out.jsonl.loom-run-live.tmp"
    live.write_text("", encoding="utf-8")
    other = tmp_path / ".other.jsonl.loom-run-dead.tmp"  # another destination's: not ours
    other.write_text("", encoding="utf-8")
    holder = hold(live)
    try:
        # `loom validate` says they are there; it removes nothing.
        assert leftover_staging(loaded) == (tmp_path / "out.jsonl", ["run-dead"])
        assert dead.exists()
        sink = open_sink(loaded)
        notes: list[str] = []
        sink.notify = notes.append
        await sink.open("run-new")
        assert not dead.exists() and not dead_csv.exists()
        assert live.exists() and other.exists()
        assert len(notes) == 1 and notes[0].startswith("removed 2 staging files")
        assert "run-dead" in notes[0] and "run-live" not in notes[0]
        await sink.write([{"record_id": "1"}])
        await publish(sink)
    finally:
        kill(holder)
    assert live.exists()
    assert ids(tmp_path / "out.jsonl") == ["1"]
