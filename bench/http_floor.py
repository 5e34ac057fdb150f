"""The HTTP floor: N bare chat-completion calls through Loom's transport, `concurrency` in flight.

    python bench/http_floor.py URL N CONCURRENCY      -> prints {"per_s": ..., "cpu_ms": ...}

No engine, no records, no store: what this machine, at this moment, allows a client to reach
against the loopback server. bench/throughput.py runs it beside Loom so a busy machine shows up
as a low floor rather than as a slow Loom.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

from core.llm.transport import ConnectionPools


async def main(url: str, count: int, concurrency: int) -> dict[str, float]:
    pools = ConnectionPools(concurrency=concurrency, timeout_s=30, headers={}, url=url)
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 50, "messages": [
        {"role": "user", "content": 'Classify.\nreply: {"sentiment": "positive"}'}]}).encode()
    target = httpx.URL(url)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            with pools.lease() as send:
                response = await send(pools.request(target, body))
            json.loads(response.content)

    await asyncio.gather(*(one() for _ in range(concurrency * 2)))  # connections open
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await pools.aclose()
    return {"per_s": count / wall, "cpu_ms": cpu / count * 1000}


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    print(json.dumps(result))
