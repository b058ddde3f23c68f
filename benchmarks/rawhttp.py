"""The delivery-side limit: a bare httpx loop POSTing goals from ``--concurrency`` threads.

One process, one shared keep-alive ``httpx.Client`` sized to the concurrency, the same headers
and body a goalqueue worker sends, and nothing else: no Redis, no Celery. It runs in its own
process so that it competes for the CPU exactly as a worker would.

    python -m benchmarks.rawhttp --url URL --n 5000 --concurrency 32
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
import uuid

import httpx

from benchmarks.workload import API_KEY, goal_body


def run(url: str, n: int, concurrency: int) -> dict[str, float]:
    """POST ``n`` goals with ``concurrency`` threads; returns elapsed seconds and errors."""
    client = httpx.Client(
        headers={"Authorization": f"Bearer {API_KEY}"},
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=30.0,
    )
    counter = itertools.count()
    errors = 0
    lock = threading.Lock()

    def loop() -> None:
        nonlocal errors
        while next(counter) < n:
            key = str(uuid.uuid4())
            try:
                client.post(url, json=goal_body(key), headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                with lock:
                    errors += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    client.close()
    return {"elapsed": elapsed, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.url, args.n, args.concurrency)), flush=True)


if __name__ == "__main__":
    main()
