"""What WAIT costs per enqueue: ``track_goal`` with GOALQUEUE_MIN_REPLICAS=0 and =1, side by side.

    python -m benchmarks.wait_cost [--n 2000] [--rounds 5]

Starts its own primary and replica (``redis-server``, no persistence, free loopback ports) and
times ``track_goal`` one goal at a time, and ``track_goals`` 100 at a time, with and without
WAIT, in alternating rounds so that whatever else the machine does hits both alike. Prints µs
per call (median, p99, mean). The README's "High availability" section quotes it.
"""

from __future__ import annotations

import argparse
import functools
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import redis

from benchmarks.systems import percentile
from goalqueue import GoalQueue
from goalqueue.config import Settings

BATCH = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _primary_and_replica() -> Iterator[str]:
    """A primary with one connected replica; yields the primary's URL."""
    ports = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as directory:
        base = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--dir", directory]
        processes = [
            subprocess.Popen([*base, "--port", str(ports[0])], stdout=subprocess.DEVNULL),
            subprocess.Popen(
                [*base, "--port", str(ports[1]), "--replicaof", "127.0.0.1", str(ports[0])],
                stdout=subprocess.DEVNULL,
            ),
        ]
        try:
            replica = redis.Redis(port=ports[1], decode_responses=True)
            deadline = time.monotonic() + 20
            while not _linked(replica):
                if time.monotonic() > deadline:
                    raise SystemExit("the replica did not connect to the primary in 20 s")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{ports[0]}/0"
        finally:
            for process in processes:
                process.kill()
                process.wait()


def _linked(replica: redis.Redis) -> bool:
    try:
        return replica.info("replication").get("master_link_status") == "up"
    except redis.ConnectionError:
        return False


def _time(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="calls per mode and kind")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with _primary_and_replica() as url:
        queues = {
            replicas: GoalQueue(settings=replace(Settings(broker_url=url), min_replicas=replicas))
            for replicas in (0, 1)
        }
        batch = [{"visitor_id": f"v{i}", "name": "signup"} for i in range(BATCH)]
        kinds: dict[str, Callable[[GoalQueue], object]] = {
            "track_goal": lambda queue: queue.track_goal("v", "signup"),
            f"track_goals({BATCH})": lambda queue: queue.track_goals(batch),
        }
        samples: dict[tuple[str, int], list[float]] = {}
        for queue in queues.values():  # warm up: connections, script cache
            for call in kinds.values():
                call(queue)
        for _ in range(args.rounds):
            for kind, call in kinds.items():
                count = args.n // args.rounds if kind == "track_goal" else args.n // 50
                for replicas, queue in queues.items():
                    timed = _time(functools.partial(call, queue), max(1, count))
                    samples.setdefault((kind, replicas), []).extend(timed)
        for queue in queues.values():
            queue.close()
    print(f"{'call':<18} {'MIN_REPLICAS':>12} {'median µs':>10} {'p99 µs':>8} {'mean µs':>8}")
    for (kind, replicas), values in samples.items():
        print(
            f"{kind:<18} {replicas:>12} {statistics.median(values):>10.0f} "
            f"{percentile(values, 99):>8.0f} {statistics.fmean(values):>8.0f}"
        )


if __name__ == "__main__":
    main()
