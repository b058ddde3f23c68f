"""What the web app pays: the asyncio producer's rate, ``track_goal``'s latency from several
threads, and the slowest call while Redis hangs with the spool on.

* ``async_rate``: one process (this one), ``tasks`` coroutines on one event loop, each tracking
  goals one after the other through one :class:`~goalqueue.AsyncGoalQueue`; goals/s over the
  whole run, with this process's CPU per goal.
* ``threaded_latency``: ``threads`` threads of this process sharing one
  :class:`~goalqueue.GoalQueue`, each timing every ``track_goal``; p50 and p99.
* ``hang_worst``: a ``redis-server`` of its own, frozen with SIGSTOP for ``hang`` seconds while
  ``threads`` threads keep tracking goals with the spool on (default enqueue timeout, 2 s); the
  slowest call, and how many goals were spooled and then re-sent once Redis thawed.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from benchmarks.scenarios import Row
from benchmarks.systems import GOALQUEUE_URL, flush
from benchmarks.workload import goal_fields
from goalqueue import AsyncGoalQueue, GoalQueue
from goalqueue.config import Settings
from goalqueue.demo import free_port
from goalqueue.keys import Keys
from goalqueue.spool import Spool

KEYS = Keys()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def async_rate(n: int, tasks: int = 64) -> Row:
    """Goals/s of one process with ``tasks`` concurrent coroutines on one AsyncGoalQueue."""
    flush(GOALQUEUE_URL)
    goals = [goal_fields() for _ in range(n)]

    async def run() -> float:
        async with AsyncGoalQueue(broker_url=GOALQUEUE_URL) as queue:
            await asyncio.gather(*(queue.track_goal(**goal) for goal in goals[:tasks]))  # warm up
            pending = iter(goals)

            async def worker() -> None:
                for goal in pending:
                    await queue.track_goal(**goal)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(tasks)))
            return time.perf_counter() - started

    cpu = _cpu_seconds()
    seconds = asyncio.run(run())
    cpu = _cpu_seconds() - cpu
    flush(GOALQUEUE_URL)
    return Row(
        "producers",
        "async_rate",
        f"AsyncGoalQueue, one process, {tasks} concurrent tasks",
        round(n / seconds),
        "goals/s",
        {"n": n, "seconds": round(seconds, 3), "cpu_us_per_goal": round(cpu / n * 1e6, 1)},
    )


def threaded_latency(n: int, threads: int = 8) -> list[Row]:
    """p50 and p99 of ``track_goal`` from ``threads`` threads sharing one GoalQueue."""
    flush(GOALQUEUE_URL)
    queue = GoalQueue(broker_url=GOALQUEUE_URL)
    per_thread = max(1, n // threads)
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def run() -> None:
        goals = [goal_fields() for _ in range(per_thread)]
        mine = []
        barrier.wait()
        for goal in goals:
            started = time.perf_counter()
            queue.track_goal(**goal)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    _in_threads(run, threads)
    queue.close()
    flush(GOALQUEUE_URL)
    cuts = statistics.quantiles(latencies, n=100)
    label = f"track_goal from {threads} threads"
    extra = {"calls": len(latencies), "max_us": round(max(latencies) * 1e6)}
    return [
        Row("producers", "threads_p50", f"{label}, p50", round(cuts[49] * 1e6), "µs", extra),
        Row("producers", "threads_p99", f"{label}, p99", round(cuts[98] * 1e6), "µs", extra),
    ]


def hang_worst(hang: float = 3.0, threads: int = 8) -> Row:
    """The slowest ``track_goal`` while Redis hangs for ``hang`` seconds, with the spool on."""
    with _private_redis() as (url, process), tempfile.TemporaryDirectory() as spool_dir:
        queue = GoalQueue(settings=Settings(broker_url=url, spool_dir=spool_dir))
        calls: list[float] = []
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                queue.track_goal(**goal_fields())
                calls.append(time.perf_counter() - started)

        runners = [threading.Thread(target=run) for _ in range(threads)]
        for runner in runners:
            runner.start()
        time.sleep(0.5)  # the benchmark's subject: calls before, during and after the hang
        os.kill(process.pid, signal.SIGSTOP)
        time.sleep(hang)
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.5)
        stop.set()
        for runner in runners:
            runner.join()
        spool = Spool(spool_dir)
        deadline = time.monotonic() + 30
        while spool.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = spool.pending()
        queued = redis.Redis.from_url(url).llen(KEYS.queue)
        queue.close()
    return Row(
        "producers",
        "hang_worst",
        f"slowest track_goal of {threads} threads, Redis frozen {hang:g} s, spool on",
        round(max(calls), 3),
        "s",
        {
            "calls": len(calls),
            "enqueue_timeout_s": Settings().enqueue_timeout_seconds,
            "over_1s": sum(1 for c in calls if c > 1.0),
            "queued_after": queued,
            "left_in_spool": left,
        },
    )


def _in_threads(target: Callable[[], None], count: int) -> None:
    runners = [threading.Thread(target=target) for _ in range(count)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()


@contextmanager
def _private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server on a free port, keeping nothing on disk."""
    directory = tempfile.mkdtemp(prefix="goalqueue-bench-redis-")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url, process
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def rows(n: int, quick: bool) -> list[Row]:
    """Every producer row: ``n`` goals for the rate and the latencies, a 3 s hang (1 s quick)."""
    return [async_rate(n), *threaded_latency(n), hang_worst(1.0 if quick else 3.0)]
