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


def _client(connections: int) -> httpx.Client:
    return httpx.Client(
        headers={"Authorization": f"Bearer {API_KEY}"},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=30.0,
    )


def run(url: str, n: int, concurrency: int, per_thread: bool = False) -> dict[str, float]:
    """POST ``n`` goals with ``concurrency`` threads sharing one client (or, ``per_thread``,
    each with its own one-connection client); returns elapsed seconds and errors."""
    shared = _client(concurrency)
    counter = itertools.count()
    errors = 0
    lock = threading.Lock()

    def loop() -> None:
        nonlocal errors
        client = _client(1) if per_thread else shared
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
    shared.close()
    return {"elapsed": elapsed, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--per-thread-client", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.url, args.n, args.concurrency, args.per_thread_client)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
