"""Benchmark: how long the command line takes to start, per command (issue 15's targets:
`loom --help` under 0.3 s, `loom runs` under 0.5 s).

Each command runs N times in a fresh interpreter (a subprocess, as a shell would start it) and
the median wall time is reported, with the fastest. The history store is a SQLite file in a
scratch LOOM_HOME holding 20 runs of the customer_sentiment sample (run in this process first),
so `loom runs` lists a full page; there is no config.yaml.

    python bench/startup.py [--repeat 9] [--source NAME=DIR …]

--source measures another checkout of Loom (say, a worktree of an older commit) with the same
interpreter and store, in a column NAME: the tree is put first on sys.path. Results go to
bench/results/startup.json and startup.md. Wall-clock on whatever else the machine is doing
(the load average is recorded): treat the figures as indicative.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SAMPLE = ROOT / "sample_pipelines" / "customer_sentiment"
RUNS_IN_STORE = 20
COMMANDS = (("loom --help", ["--help"]), ("loom --version", ["--version"]),
            ("loom runs", ["runs"]),
            ("loom validate sample_pipelines/customer_sentiment", ["validate", "SAMPLE"]))
# The console script's own code (loom_tui.cli:main), with a chosen tree first on sys.path.
LAUNCHER = "import sys; sys.path.insert(0, sys.argv.pop(1)); from loom_tui.cli import main; " \
           "sys.exit(main())"


def fill_store(home: Path, work: Path) -> Path:
    """RUNS_IN_STORE runs of the sample (3 records each), in this process; the sample's copy."""
    sample = work / "customer_sentiment"
    shutil.copytree(SAMPLE, sample)
    os.environ["LOOM_HOME"] = str(home)
    sys.path.insert(0, str(ROOT))
    from core import cli

    for _ in range(RUNS_IN_STORE):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(["--run", str(sample / "pipeline.yaml"), "--limit", "3"])
        if code not in (0, 3):
            raise SystemExit(f"the sample run failed (exit {code})")
    return sample


def commit(tree: Path) -> str:
    """The tree's commit, with a + when its working tree has changes."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "core",
                            "loom_tui"], capture_output=True, text=True).stdout.strip()
    return head + ("+" if dirty else "")


def time_command(source: Path, argv: list[str], *, repeat: int, cwd: Path,
                 env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", LAUNCHER, str(source), *argv], cwd=cwd,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"{argv}: exit {result.returncode}: {result.stderr.decode()[-300:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9, help="runs per command (default 9)")
    parser.add_argument("--source", action="append", default=[], metavar="NAME=DIR",
                        help="also measure this checkout of Loom, in a column NAME (repeatable)")
    args = parser.parse_args()
    sources = [(f"this tree ({commit(ROOT)})", ROOT)]
    for given in args.source:
        name, _, folder = given.rpartition("=")
        path = Path(folder).resolve()
        sources.append((f"{name or path.name} ({commit(path)})", path))
    with tempfile.TemporaryDirectory(prefix="loom-startup-") as scratch:
        work = Path(scratch)
        sample = fill_store(work / "home", work)
        env = {**os.environ, "LOOM_HOME": str(work / "home")}
        env.pop("LOOM_STORE_URL", None)
        load_before = os.getloadavg()
        rows = []
        for label, argv in COMMANDS:
            argv = [str(sample) if a == "SAMPLE" else a for a in argv]
            row = {"command": label}
            for name, source in sources:
                times = time_command(source, argv, repeat=args.repeat, cwd=work, env=env)
                row[name] = {"median_s": round(statistics.median(times), 3),
                             "min_s": round(min(times), 3)}
                print(f"{label:55} {name:20} median {row[name]['median_s']:.3f} s · "
                      f"min {row[name]['min_s']:.3f} s", flush=True)
            rows.append(row)
        load_after = os.getloadavg()
    write_results(rows, sources, args.repeat, load_before, load_after)


def write_results(rows: list[dict], sources: list[tuple[str, Path]], repeat: int,
                  load_before: tuple[float, float, float],
                  load_after: tuple[float, float, float]) -> None:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    meta = {"at": now, "python": platform.python_version(), "cores": os.cpu_count(),
            "repeat": repeat, "runs_in_store": RUNS_IN_STORE,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "sources": {name: str(path) for name, path in sources}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps({"meta": meta, "commands": rows}, indent=2)
                                          + "\n", encoding="utf-8")
    names = [name for name, _ in sources]
    lines = [
        "# Start-up time of the command line",
        "",
        f"`python bench/startup.py` ({now}, Python {meta['python']}, {meta['cores']} cores, "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after: shared with other "
        "work, so the figures are indicative; raw numbers in `startup.json`).",
        "",
        f"Each command started {repeat} times in a fresh interpreter; median (fastest) wall time. "
        f"`loom runs` lists {RUNS_IN_STORE} runs from a SQLite store; no config.yaml.",
        "",
        "| command | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for row in rows:
        cells = [f"{row[name]['median_s']:.2f} s ({row[name]['min_s']:.2f})" for name in names]
        lines.append(f"| `{row['command']}` | " + " | ".join(cells) + " |")
    lines.append("")
    (RESULTS / "startup.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {RESULTS / 'startup.md'}")


if __name__ == "__main__":
    main()
