"""Benchmark: the workbench's Quarantine and History screens over 100,000 rows each.

Builds (once, then reuses) a history store with 100,000 runs and 100,000 quarantined records,
written through the Store API, then drives the real app headless at 120×36:

- time to first paint: from the key that opens the screen to its first page of rows drawn;
- per page: page-down presses through the listing (the table keeps one bounded window and
  fetches the next page by keyset as the cursor nears its end), timed per press, with the
  presses that waited on a store fetch reported apart;
- end / home: jumping to the last page and back to the first.

    python bench/tui_quarantine_history.py [--rows 100000] [--pages 300] [--rebuild]

Results go to bench/results/tui_quarantine_history.json (and a line per metric on stdout).
Timings are wall-clock on whatever else the machine is doing: treat them as indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.events import RunSummary  # noqa: E402
from core.records import (LLMCall, Outcome, Record, RecordResult, Score, Stage,  # noqa: E402
                          TransformResult, Verdict)
from core.store import RunStart, Store  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "tui_quarantine_history.json"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SIZE = (120, 36)
PIPELINES = ("customer_sentiment", "ticket_triage", "invoice_fields", "support_summaries")


def run_id(n: int) -> str:
    return f"{T0 + timedelta(seconds=30 * n):%Y%m%d-%H%M%S}-{n:06x}"


def quarantined(ordinal: int) -> RecordResult:
    record = Record(id=f"R{ordinal:07d}", ordinal=ordinal, data={
        "review_id": f"R{ordinal:07d}", "product": "kettle",
        "text": "Boils fast, but the lid stopped closing after a month of daily use.",
        "expected": "negative"})
    call = LLMCall(stage="transform", provider="openai", model="gpt-4o-mini", input_tokens=230,
                   output_tokens=31, cost_usd=0.000053, latency_s=0.41)
    output = {"sentiment": "positive", "confidence": 0.71,
              "summary": "Fast boiling; the lid problem reads as a minor complaint."}
    transform = TransformResult(output=output, raw_text=json.dumps(output),
                                messages=[{"role": "user", "content": record.data["text"]}],
                                calls=[call])
    scores = [Score("label_ok", "one_of", 1.0, True, 1.0, explanation="in the list"),
              Score("matches_truth", "exact_match", 0.0, False, 1.0,
                    explanation="expected 'negative', found 'positive'")]
    verdict = Verdict(False, "all_pass", 0.5, None,
                      "all_pass failed: matches_truth 0.00 < 1.00 (expected 'negative', "
                      "found 'positive')")
    return RecordResult(record, Outcome.QUARANTINED, Stage.EVALUATE, verdict.reason,
                        "QualityGate", transform=transform, scores=scores, verdict=verdict)


async def build(store: Store, rows: int) -> None:
    """`rows` runs and `rows` quarantined records, through the Store API."""
    started = time.perf_counter()
    for n in range(rows):
        pipeline = PIPELINES[n % len(PIPELINES)]
        rid = run_id(n)
        await store.start_run(RunStart(
            run_id=rid, pipeline=pipeline, pipeline_version="1.0.0",
            pipeline_path=f"/srv/pipelines/{pipeline}.yaml",
            started_at=T0 + timedelta(seconds=30 * n), config={"name": pipeline},
            model="gpt-4o-mini", provider="openai", prompt_hash=f"{n % 7:064x}",
            system_hash=None, context_hashes={}, params={}, options={},
            source="csv://data/reviews.csv", destination="csv://out/results.csv"))
        extracted = 40 + n % 60
        quarantined_count = n % 9
        await store.finish_run(RunSummary(
            run_id=rid, pipeline=pipeline, status=("success", "success", "partial", "failed",
                                                    "cancelled")[n % 5] if n % 3 else "success",
            status_reason=None, extracted=extracted, loaded=extracted - quarantined_count,
            quarantined=quarantined_count, skipped=0, cost_usd=0.0021 + (n % 13) * 0.0001,
            cost_by_stage={}, cost_by_model={}, input_tokens=extracted * 230,
            output_tokens=extracted * 31, llm_calls=extracted, cache_hits=0,
            duration_s=10 + n % 20, latency_p50_s=0.35 + (n % 10) / 100,
            latency_p95_s=0.9 + (n % 10) / 50, latency_p99_s=1.4), [])
        if n and n % 10_000 == 0:
            print(f"  {n:,} runs ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    # The quarantine: `rows` records over the first 100 runs, 1,000 per write.
    per_run = max(1, rows // 100)
    ordinal = 0
    for n in range(100):
        for start in range(0, per_run, 1000):
            batch = [quarantined(ordinal + i) for i in range(min(1000, per_run - start))]
            ordinal += len(batch)
            await store.write_results(run_id(n), PIPELINES[n % len(PIPELINES)], batch)
    print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr)


async def ensure_store(home: Path, rows: int, rebuild: bool) -> None:
    database = home / "loom.db"
    if rebuild and database.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    async with await Store.open(f"sqlite:///{database}") as store:
        have_runs = await store.count_runs()
        have_quarantine = await store.count_quarantine(status=None)
        if (have_runs, have_quarantine) == (rows, rows):
            print(f"reusing {database} ({rows:,} runs, {rows:,} quarantined)", file=sys.stderr)
            return
        if have_runs or have_quarantine:
            raise SystemExit(f"{database} holds other data: pass --rebuild")
        print(f"building {database}: {rows:,} runs and {rows:,} quarantined records "
              "(through the Store API; minutes, once)", file=sys.stderr)
        await build(store, rows)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 2),
            "max_ms": round(max(values) * 1000, 2)}


async def measure_screen(key: str, table_id: str, pages: int) -> dict[str, Any]:
    from loom_tui.app import LoomApp
    from loom_tui.widgets.paged_table import PagedTable

    app = LoomApp(ROOT)
    result: dict[str, Any] = {}
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        began = time.perf_counter()
        await pilot.press(key)
        table = app.screen.query_one(table_id, PagedTable)
        while not table.rows:
            await asyncio.sleep(0.001)
        first_rows = time.perf_counter() - began
        await pilot.pause()  # the refresh that draws them
        first_paint = time.perf_counter() - began
        while table.total is None:
            await asyncio.sleep(0.001)
        counted = time.perf_counter() - began
        result.update(first_rows_ms=round(first_rows * 1000, 1),
                      first_paint_ms=round(first_paint * 1000, 1),
                      total_known_ms=round(counted * 1000, 1), total=table.total)

        # Warm: the screen exists; ctrl+r forgets the rows and fetches the first page again.
        began = time.perf_counter()
        await app.screen.run_action("refresh")
        await pilot.pause()
        while table.waiting or not table.rows:
            await asyncio.sleep(0.001)
        await pilot.pause()
        result["refresh_first_paint_ms"] = round((time.perf_counter() - began) * 1000, 1)

        # Page after page: the page-down action, then the refresh that draws it. A page whose
        # rows are not in the window yet waits for its fetch (prefetched 20 rows ahead).
        per_page, stalled = [], 0
        largest_window = 0
        table.page_times.clear()
        for _ in range(pages):
            before = table.window_start + table.cursor
            start = time.perf_counter()
            table.action_page(1)
            while table.window_start + table.cursor == before and table.waiting:
                await asyncio.sleep(0.0005)
                table.action_page(1) if not table.waiting else None
            if table.window_start + table.cursor == before:
                stalled += 1
            await pilot.pause()  # drawn
            per_page.append(time.perf_counter() - start)
            largest_window = max(largest_window, len(table.rows))
        while table.waiting:
            await asyncio.sleep(0.001)
        result["per_page"] = summary(per_page)
        result["page_fetch"] = summary(list(table.page_times))
        result.update(rows_scrolled=table.window_start + table.cursor, presses_stalled=stalled,
                      largest_window=largest_window, window_limit=table.window_size,
                      page_size=table.page_size)

        start = time.perf_counter()
        await pilot.press("end")
        while table.highlighted is None or table.window_start + table.cursor + 1 < (table.total or 0):
            await asyncio.sleep(0.001)
        await pilot.pause()
        result["end_ms"] = round((time.perf_counter() - start) * 1000, 1)
        start = time.perf_counter()
        await pilot.press("home")
        while table.highlighted is None or table.window_start + table.cursor != 0 or table.waiting:
            await asyncio.sleep(0.001)
        await pilot.pause()
        result["home_ms"] = round((time.perf_counter() - start) * 1000, 1)
        await pilot.press("ctrl+q")
    return result


async def empty_screen_ms(key: str, table_id: str) -> float:
    """The same screen opened on an empty store: what building the screen itself costs."""
    import tempfile

    from loom_tui.app import LoomApp
    from loom_tui.widgets.paged_table import PagedTable

    home = os.environ["LOOM_HOME"]
    os.environ["LOOM_HOME"] = tempfile.mkdtemp(prefix="loom-bench-empty-")
    try:
        app = LoomApp(ROOT)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await app.workers.wait_for_complete()
            began = time.perf_counter()
            await pilot.press(key)
            table = app.screen.query_one(table_id, PagedTable)
            while table.waiting:
                await asyncio.sleep(0.001)
            await pilot.pause()
            elapsed = time.perf_counter() - began
            await pilot.press("ctrl+q")
    finally:
        os.environ["LOOM_HOME"] = home
    return round(elapsed * 1000, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--home", type=Path, default=Path(os.environ.get(
        "LOOM_BENCH_HOME", "/tmp/loom-bench-tui")))
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    args.home.mkdir(parents=True, exist_ok=True)
    os.environ["LOOM_HOME"] = str(args.home)
    os.environ.pop("LOOM_STORE_URL", None)
    await ensure_store(args.home, args.rows, args.rebuild)

    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "rows": args.rows, "terminal": list(SIZE),
        "quarantine": await measure_screen("f3", "#q-table", args.pages),
        "history": await measure_screen("f4", "#h-table", args.pages),
    }
    results["quarantine"]["empty_store_first_paint_ms"] = await empty_screen_ms("f3", "#q-table")
    results["history"]["empty_store_first_paint_ms"] = await empty_screen_ms("f4", "#h-table")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for screen in ("quarantine", "history"):
        data = results[screen]
        print(f"{screen:<10} first paint {data['first_paint_ms']:.0f} ms cold (the same screen on "
              f"an empty store: {data['empty_store_first_paint_ms']:.0f} ms; count known "
              f"{data['total_known_ms']:.0f} ms), "
              f"{data['refresh_first_paint_ms']:.0f} ms warm · page-down median "
              f"{data['per_page']['median_ms']:.1f} ms, p95 {data['per_page']['p95_ms']:.1f} ms"
              f" over {data['per_page']['n']} pages ({data['rows_scrolled']:,} rows, window ≤ "
              f"{data['largest_window']}) · page fetch median {data['page_fetch']['median_ms']:.1f}"
              f" ms · end {data['end_ms']:.0f} ms · home {data['home_ms']:.0f} ms")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
