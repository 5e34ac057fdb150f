"""Disk and store faults: a full disk (under the destination, under LOOM_HOME, or a file size
limit on the process) and a read-only LOOM_HOME each give one clear line and a non-zero exit —
never a traceback, never a half-written destination — and the run resumes once there is room.

A full filesystem is a real one: a small tmpfs mounted for the test, which needs root (CI runs
as root). Without root those tests skip, and the file-size-limit test (RLIMIT_FSIZE, SIGXFSZ
ignored, so writes fail with EFBIG) covers a full disk anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.pipelines import reply, write_pipeline
from tests.support.loom_process import ROOT, LoopbackProcess, run_loom, start_loom, store_rows

LABELS = ["positive", "negative", "neutral"]
RECORDS = 2000


def source_rows(count: int = RECORDS) -> list[dict[str, str]]:
    return [{"id": f"r{i:05d}", "text": f"review {i} " + "many words " * 10,
             "expected": LABELS[i % 3], "reply": reply(LABELS[i % 3])} for i in range(count)]


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


def assert_whole_lines_of_loaded_records(destination: Path, home: Path, run_id: str) -> None:
    """The destination holds exactly the records the store says loaded: whole rows, once."""
    written = [json.loads(line)["id"] for line in destination.read_text().splitlines()]
    loaded = {row[0] for row in store_rows(
        home, "SELECT record_id FROM record_results WHERE run_id = ? AND outcome = 'loaded'",
        run_id)}
    assert len(written) == len(set(written)) and set(written) == loaded


def no_leftovers(folder: Path) -> bool:
    # A run that failed before its sink opened made no folder at all: nothing left either.
    return not folder.exists() or not [p for p in folder.iterdir() if ".loom-" in p.name]


def assert_resumed_to_every_record_once(pipeline: Path, destination: Path,
                                        *extra: str) -> None:
    resumed = run_loom("--run", str(pipeline), "--resume", *extra, "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["records"] == {"extracted": RECORDS, "loaded": RECORDS, "quarantined": 0,
                                  "skipped": 0}
    written = [json.loads(line)["id"] for line in destination.read_text().splitlines()]
    assert len(written) == len(set(written)) == RECORDS


# ---------------------------------------------------------------- a file size limit (anywhere)


def test_a_file_size_limit_is_one_clear_error_and_the_run_resumes_later(
        tmp_path, loom_home, llm_server):
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(), base_url=llm_server.base_url)
    limit = 600 * 1024  # the history store outgrows this first
    limited = subprocess.run(
        [sys.executable, "-c",
         "import os, resource, signal, sys\n"
         "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a write fails with EFBIG instead
         f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
         "from loom_tui.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n",
         "--run", str(pipeline), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert_one_clear_line(limited, "cannot write to the history store",
                          str(loom_home / "loom.db"))
    assert limited.stdout == ""
    out = tmp_path / "p" / "out"
    assert not (out / "results.jsonl").exists() and (not out.exists() or no_leftovers(out))
    # The run could not be finished in the store: it stays running, resumable once it can be.
    assert store_rows(loom_home, "SELECT status FROM pipeline_runs") == [("running",)]
    assert_resumed_to_every_record_once(pipeline, out / "results.jsonl")


# ---------------------------------------------------------------- small filesystems (root)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator:
    """mount(size) -> a folder on a tmpfs of that size; grow(folder, size) makes room."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if in_ci():
            pytest.fail("CI runs as root with mount(8): the full-disk tests must run there")
        pytest.skip("mounting a small filesystem needs root (the file size limit test covers "
                    "a full disk without it)")
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        folder = tmp_path / f"fs-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        opts = ",".join([f"size={size}", *options])
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            if in_ci():
                pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    def grow(folder: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    mount.grow = grow  # type: ignore[attr-defined]
    try:
        yield mount
    finally:
        for folder in mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_under_the_destination(tmp_path, loom_home, llm_server, small_filesystem):
    disk = small_filesystem("64k")
    destination = disk / "results.jsonl"
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(), base_url=llm_server.base_url,
                              load={"destination": f"jsonl://{destination}"})
    failed = run_loom("--run", str(pipeline), "--json")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stdout.strip(), failed.stderr  # the summary, not only an error line
    summary = json.loads(failed.stdout)
    assert summary["status"] == "failed"
    assert summary["status_reason"] == (f"jsonl destination {destination}: cannot write: "
                                        f"No space left on device")
    records = summary["records"]
    assert records["extracted"] == records["loaded"] + records["quarantined"] + records["skipped"]
    assert records["skipped"] > 0
    # What was published is whole batches of the records the store says loaded.
    if destination.exists():
        assert_whole_lines_of_loaded_records(destination, loom_home, summary["run_id"])
    assert no_leftovers(disk)

    small_filesystem.grow(disk, "16m")
    assert_resumed_to_every_record_once(pipeline, destination, summary["run_id"])


def empty_store_bytes(folder: Path) -> int:
    """How big a freshly migrated store is: the full disk must leave room for it (and its
    write-ahead log while migrating), so that the run starts and fills the disk mid-run."""
    folder.mkdir()
    subprocess.run([sys.executable, "-m", "loom_tui.cli", "runs"], env={**os.environ,
                   "LOOM_HOME": str(folder)}, capture_output=True, check=True, timeout=120)
    return (folder / "loom.db").stat().st_size


def test_a_full_disk_under_loom_home(tmp_path, llm_server, small_filesystem, monkeypatch):
    home = small_filesystem(f"{2 * empty_store_bytes(tmp_path / 'sized') // 1024 + 96}k")
    monkeypatch.setenv("LOOM_HOME", str(home))
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(), base_url=llm_server.base_url)
    full = run_loom("--run", str(pipeline), "--json")
    assert_one_clear_line(full, f"cannot write to the history store {home / 'loom.db'}",
                          "database or disk is full")
    out = tmp_path / "p" / "out"
    assert not (out / "results.jsonl").exists() and no_leftovers(out)

    small_filesystem.grow(home, "64m")
    assert_resumed_to_every_record_once(pipeline, out / "results.jsonl")


@pytest.mark.parametrize("existing_store", [False, True], ids=["new", "existing-store"])
def test_a_read_only_loom_home_is_one_line(tmp_path, llm_server, monkeypatch, existing_store):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LOOM_HOME", str(home))
    pipeline = write_pipeline(tmp_path / "p", rows=source_rows(20), base_url=llm_server.base_url)
    if existing_store:
        assert run_loom("--run", str(pipeline), "--json").returncode == 0
    if os.geteuid() == 0:  # permissions do not stop root: make the filesystem read-only
        subprocess.run(["mount", "--bind", str(home), str(home)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True)
    else:
        home.chmod(0o555)
    try:
        for args in (("--run", str(pipeline), "--json"), ("runs",)):
            result = run_loom(*args)
            assert_one_clear_line(result, f"cannot open the history store {home / 'loom.db'}: "
                                          f"its folder {home} is read-only")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(home)], check=True)
        else:
            home.chmod(0o755)
    assert not (tmp_path / "p" / "out" / "results.jsonl").exists() or existing_store


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl+c", "sigterm"])
def test_a_stop_signal_mid_run_cancels_cleanly_and_resumes(tmp_path, loom_home, signum):
    """ctrl+c at the terminal and a service manager's SIGTERM: the calls in flight finish, the
    run ends `cancelled` with what passed published, and --resume pays only for what never ran."""
    with LoopbackProcess(latency_ms=20) as server:
        pipeline = write_pipeline(tmp_path / "p", rows=source_rows(600), base_url=server.base_url,
                                  transform={"concurrency": 4, "cache": False})
        proc = start_loom("--run", str(pipeline), "--json")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if store_rows(loom_home, "SELECT count(*) FROM record_results")[0][0] >= 100:
                    break
            except sqlite3.Error:
                pass  # the store is being created
            time.sleep(0.02)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert "stopping: finishing records in flight" in err and "Traceback" not in err
        summary = json.loads(out)
        records = summary["records"]
        assert summary["status"] == "cancelled" and records["skipped"] > 0
        calls = server.requests
        assert calls == records["loaded"] + records["quarantined"]  # nothing abandoned

        resumed = run_loom("--run", str(pipeline), "--resume", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert server.requests - calls == 600 - calls
        written = [json.loads(line)["id"] for line in
                   (tmp_path / "p" / "out" / "results.jsonl").read_text().splitlines()]
        assert len(written) == len(set(written)) == 600
