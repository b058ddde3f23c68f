"""The client limit: what the worker's HTTP client does alone, with no queue behind it.

A bare ``httpx.AsyncClient`` on ``httpx_aiohttp.AiohttpTransport`` (aiohttp's connector sized
to the concurrency), the client a goalqueue worker process delivers with, POSTs the goal a
worker sends (``Authorization: Bearer``, the JSON body, an ``Idempotency-Key``) with
``--concurrency`` requests in flight, until ``--n`` requests are done. ``--processes K`` forks K
such clients after the imports, so that they start together, and splits N between them. No
Redis, no Celery. It runs in its own process(es), so it competes for the CPU as a worker would.

    python -m benchmarks.client_limit --url URL --n 5000 --concurrency 256 [--processes 2]

Once done it prints ``RESULT {"elapsed": ..., "errors": ...}`` and waits to be stopped (SIGTERM),
so that the harness reads its CPU while it is still there to be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import signal
import time
import uuid

import httpx
from httpx_aiohttp import AiohttpTransport

from benchmarks.workload import API_KEY, goal_body
from goalqueue.config import Settings

RESULT_PREFIX = "RESULT "


async def _post_all(url: str, n: int, concurrency: int) -> int:
    """POST ``n`` goals, ``concurrency`` at a time; returns how many failed."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    errors = 0
    requests = iter(range(n))  # shared by the loops: each request is taken by exactly one

    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=httpx.Timeout(Settings().http_timeout_seconds),
        transport=AiohttpTransport(limits=limits),
    ) as client:

        async def loop() -> None:
            nonlocal errors
            for _ in requests:
                key = str(uuid.uuid4())
                try:
                    response = await client.post(
                        url, json=goal_body(key), headers={"Idempotency-Key": key}
                    )
                    response.raise_for_status()
                except httpx.HTTPError:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(min(concurrency, n))))
    return errors


def run(url: str, n: int, concurrency: int) -> dict[str, float]:
    """One client process's share: elapsed seconds and errors."""
    started = time.perf_counter()
    errors = asyncio.run(_post_all(url, n, concurrency))
    return {"elapsed": time.perf_counter() - started, "errors": errors}


def shares(n: int, processes: int) -> list[int]:
    """``n`` split between ``processes`` as evenly as whole requests allow."""
    return [n // processes + (index < n % processes) for index in range(processes)]


def run_processes(url: str, n: int, concurrency: int, processes: int) -> dict[str, float]:
    """``processes`` clients side by side, forked after the imports; their slowest elapsed
    time and their errors summed."""
    if processes == 1:
        return run(url, n, concurrency)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.starmap(run, [(url, share, concurrency) for share in shares(n, processes)])
    return {
        "elapsed": max(result["elapsed"] for result in results),
        "errors": sum(result["errors"] for result in results),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    result = run_processes(args.url, args.n, args.concurrency, args.processes)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
