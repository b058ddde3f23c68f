"""The four measurements, each run in isolation on a flushed database.

Every scenario starts what it needs (endpoint, workers) under :class:`Processes` and stops it
before returning, so one scenario never sees another's processes, keys or backlog.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.client_limit import RESULT_PREFIX
from benchmarks.procs import (
    Child,
    Processes,
    ProcessTable,
    machine_busy_seconds,
    own_cpu_seconds,
    read_line,
)
from benchmarks.systems import (
    BULK_BATCH,
    GOALQUEUE_URL,
    PLAIN_URL,
    ClientLimit,
    System,
    bounded_poll,
    flush,
    percentile,
    plain_task,
)
from benchmarks.workload import goal_body, goal_fields
from goalqueue import GoalQueue
from goalqueue.event import GoalEvent
from goalqueue.keys import VISITOR_WINDOW_SECONDS, Keys
from goalqueue.message import template
from workers.scripts import Settlement, SweeperScripts

WORKER_BOOT_SECONDS = 60.0

KEYS = Keys()  # the default namespace, which the benchmark's goalqueue workers run in


@dataclass
class Row:
    """One measured number and what it means."""

    section: str
    key: str
    label: str
    value: float | None
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the endpoint


class Endpoint:
    """The fast local endpoint (:mod:`benchmarks.endpoint`) in its own process."""

    def __init__(self, procs: Processes, latency_ms: float) -> None:
        self.child = procs.start(
            "endpoint",
            [sys.executable, "-m", "benchmarks.endpoint", "--latency-ms", str(latency_ms)],
            _env(),
            capture_stdout=True,
        )
        assert self.child.process.stdout is not None
        port = int(read_line(self.child.process.stdout, "LISTENING", 15).split()[1])
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/api/v1/goals"
        self.admin = httpx.Client(base_url=self.base, timeout=10)

    def stats(self) -> dict[str, Any]:
        return dict(self.admin.get("/_bench/stats").json())

    def count(self) -> int:
        return int(self.stats()["count"])

    def events(self) -> list[tuple[float, str]]:
        """(time answered, idempotency key) of every goal request, in order."""
        return [(at, key) for at, key in self.admin.get("/_bench/events").json()["events"]]

    def arrivals(self) -> dict[str, float]:
        """Idempotency key -> time its goal was answered (the first time, if repeated)."""
        return first_arrivals(self.events())

    def close(self) -> None:
        self.admin.close()


def first_arrivals(events: list[tuple[float, str]]) -> dict[str, float]:
    """Idempotency key -> the time its goal was first answered."""
    arrivals: dict[str, float] = {}
    for at, key in events:
        arrivals.setdefault(key, at)
    return arrivals


def _env() -> dict[str, str]:
    return dict(os.environ)


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class Parties:
    """Whose CPU a scenario measures: the process trees it started, by name, and Redis."""

    trees: dict[str, Sequence[Child]]
    redis: redis.Redis | None = None

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each party so far, from one look at the process table."""
        table = ProcessTable.read()
        cpu = {
            name: sum(table.cpu_seconds(child.pid) for child in children)
            for name, children in self.trees.items()
        }
        if self.redis is not None:
            cpu["redis"] = redis_cpu(self.redis)
        return cpu


@dataclass
class Window:
    """CPU seconds of each party, and of the whole machine, at one moment of a run."""

    count: int
    at: float
    cpu: dict[str, float]
    machine: float


def _snapshot(count: int, parties: Parties) -> Window:
    cpu = parties.cpu()
    cpu["harness"] = own_cpu_seconds()
    return Window(count, time.monotonic(), cpu, machine_busy_seconds())


def foreign_cores(first: Window, last: Window) -> float:
    """Cores kept busy during the window by processes that are not part of the scenario
    (other people's tests on a shared machine): the numbers are suspect when this is high."""
    ours = sum(last.cpu[name] - first.cpu[name] for name in last.cpu)
    wall = last.at - first.at
    return round(max(0.0, (last.machine - first.machine) - ours) / wall, 2) if wall > 0 else 0.0


def watch_delivery(
    endpoint: Endpoint, n: int, budget: float, running: Sequence[Child], parties: Parties
) -> dict[str, Any]:
    """Wait for the endpoint's first accepted goal (start-up, up to ``WORKER_BOOT_SECONDS``),
    then until it accepted ``n`` goals or ``budget`` more seconds passed.

    The rate runs from the first accepted goal to the ``n``-th, or to the last one seen when
    fewer arrived within the budget (``complete`` is then false), so that start-up counts for
    no one. The CPU each party spent per goal is taken over the same window: from the last
    look before the first goal to the first look after the ``n``-th.
    """
    first = _before_first_goal(endpoint, running, parties)
    count = 0
    for _ in bounded_poll(budget, 0.02):
        count = endpoint.count()
        if count >= n or not all(child.alive() for child in running):
            break
    last = _snapshot(count, parties)
    _require_alive(running)
    return {**steady_rate(endpoint.events(), n), **_cpu_per_goal(first, last)}


def _before_first_goal(endpoint: Endpoint, running: Sequence[Child], parties: Parties) -> Window:
    """The last look at every party's CPU before the endpoint accepted its first goal."""
    before = _snapshot(0, parties)
    for _ in bounded_poll(WORKER_BOOT_SECONDS, 0.02):
        look = _snapshot(0, parties)
        if endpoint.count() > 0:
            return before
        _require_alive(running)
        before = look
    raise TimeoutError(
        f"no goal reached the endpoint within {WORKER_BOOT_SECONDS:g} s:\n{running[0].output()}"
    )


def _require_alive(running: Sequence[Child]) -> None:
    for child in running:
        if not child.alive():
            raise RuntimeError(f"{child.name} died:\n{child.output()}")


def steady_rate(events: list[tuple[float, str]], n: int) -> dict[str, Any]:
    """Goals/s from the first accepted goal to the ``n``-th (a goal counts once, when first
    accepted), or to the last one accepted if fewer than ``n`` were."""
    arrivals = sorted(first_arrivals(events).values())
    reached = arrivals[:n]
    span = reached[-1] - reached[0] if reached else 0.0
    return {
        "delivered": len(reached),
        "enqueued": n,
        "seconds": round(span, 3),
        "goals_per_s": round((len(reached) - 1) / span, 1) if span > 0 else None,
        "complete": len(reached) >= n,
        "duplicates": len(events) - len(arrivals),
    }


def _cpu_per_goal(first: Window, last: Window) -> dict[str, Any]:
    goals = last.count - first.count
    if goals <= 0:
        return {}
    return {
        "cpu_us_per_goal": {
            name: round((last.cpu[name] - first.cpu[name]) / goals * 1e6)
            for name in last.cpu
            if name != "harness"
        },
        "foreign_cores": foreign_cores(first, last),
    }


# --------------------------------------------------------------------------- delivery


def delivery(
    system: System, latency_ms: float, n: int, budget: float, log_dir: Path
) -> dict[str, Any]:
    """Throughput of one worker node of ``system`` draining ``n`` pre-enqueued goals."""
    flush(system.broker_url)
    enqueuer = system.enqueuer()
    with Processes(log_dir) as procs:
        endpoint = Endpoint(procs, latency_ms)
        enqueuer.many(n)
        workers = [
            procs.start(
                f"{system.key}-{latency_ms:g}ms-{index}",
                system.argv(index),
                system.env(endpoint.url),
            )
            for index in range(system.processes)
        ]
        client = redis.Redis.from_url(system.broker_url, decode_responses=True)
        try:
            result = watch_delivery(
                endpoint,
                n,
                budget,
                workers,
                Parties({"worker": workers, "endpoint": [endpoint.child]}, client),
            )
            if system.kind == "goalqueue":
                result["settled"] = _settled(client, result["delivered"])
        finally:
            client.close()
            endpoint.close()
            enqueuer.close()
    flush(system.broker_url)
    return result


def _settled(client: redis.Redis, delivered: int) -> int:
    """How many goals the workers recorded as delivered (waits briefly for the last ones)."""
    count = 0
    for _ in bounded_poll(10, 0.05):
        count = int(client.get(KEYS.delivered_count) or 0)
        if count >= delivered:
            break
    return count


def client_limit(
    limit: ClientLimit, latency_ms: float, n: int, budget: float, log_dir: Path
) -> dict[str, Any]:
    """The client limit: :mod:`benchmarks.client_limit` POSTing ``n`` goals to the same endpoint."""
    with Processes(log_dir) as procs:
        endpoint = Endpoint(procs, latency_ms)
        client = procs.start(
            f"{limit.key}-{latency_ms:g}ms",
            [
                sys.executable,
                "-m",
                "benchmarks.client_limit",
                "--url",
                endpoint.url,
                "--n",
                str(n),
                "--concurrency",
                str(limit.concurrency),
                "--processes",
                str(limit.processes),
            ],
            _env(),
            capture_stdout=True,
        )
        try:
            result = watch_delivery(
                endpoint,
                n,
                budget,
                [client],
                Parties({"client": [client], "endpoint": [endpoint.child]}),
            )
            result["errors"] = _client_errors(client, 30.0 if result["complete"] else 1.0)
        finally:
            endpoint.close()
    result.update(processes=limit.processes, concurrency=limit.concurrency)
    return result


def _client_errors(client: Child, timeout: float) -> int | None:
    """The failed requests the client reports once done (``None``: it is not done yet)."""
    assert client.process.stdout is not None
    try:
        line = read_line(client.process.stdout, RESULT_PREFIX, timeout)
    except TimeoutError:
        return None
    return int(json.loads(line.removeprefix(RESULT_PREFIX))["errors"])


# --------------------------------------------------------------------------- latency


def latency(system: System, samples: int, log_dir: Path) -> dict[str, Any]:
    """Enqueue-to-delivered latency, one goal at a time on an otherwise idle system."""
    flush(system.broker_url)
    enqueuer = system.enqueuer()
    with Processes(log_dir) as procs:
        endpoint = Endpoint(procs, 0)
        worker = procs.start(f"{system.key}-latency", system.argv(), system.env(endpoint.url))
        try:
            # The first delivery proves the worker is up; then let its start-up settle.
            enqueuer.one()
            _wait_count(endpoint, 1, WORKER_BOOT_SECONDS, worker)
            time.sleep(1.0)
            parties = Parties({"worker": [worker], "endpoint": [endpoint.child]})
            first = _snapshot(0, parties)
            sent: dict[str, float] = {}
            for index in range(samples):
                started = time.time()
                sent[enqueuer.one()] = started
                _wait_count(endpoint, index + 2, 10, worker, interval=0.001)
                time.sleep(0.01)
            arrivals = endpoint.arrivals()
            last = _snapshot(0, parties)
        finally:
            endpoint.close()
            enqueuer.close()
    flush(system.broker_url)
    millis = [(arrivals[key] - at) * 1000 for key, at in sent.items() if key in arrivals]
    return {
        "samples": len(millis),
        "p50_ms": round(percentile(millis, 50), 2),
        "p99_ms": round(percentile(millis, 99), 2),
        "max_ms": round(max(millis), 2),
        "foreign_cores": foreign_cores(first, last),
    }


def _wait_count(
    endpoint: Endpoint, count: int, timeout: float, worker: Child, interval: float = 0.02
) -> None:
    for _ in bounded_poll(timeout, interval):
        if endpoint.count() >= count:
            return
        if not worker.alive():
            raise RuntimeError(f"worker died:\n{worker.output()}")
    raise TimeoutError(f"{count} deliveries not seen within {timeout} s:\n{worker.output()}")


# --------------------------------------------------------------------------- enqueue cost


def enqueue_costs(n: int, repeats: int) -> list[Row]:
    """µs per goal for each way of enqueueing, in ``repeats`` interleaved rounds of ``n`` goals
    (every way once per round, so that a busier minute weighs on all of them): each row is the
    best round, and ``track_goal_vs_lpush`` the median over rounds of the two side by side."""
    flush(GOALQUEUE_URL)
    flush(PLAIN_URL)
    queue = GoalQueue(broker_url=GOALQUEUE_URL)
    raw = redis.Redis.from_url(GOALQUEUE_URL)
    task = plain_task()
    event_id = "0b0e9f9c-8f2e-4a7e-9a51-8f0e1b7c2d3a"
    message = template(KEYS) % (123456, event_id, 123456)

    def single(goals: list[dict[str, Any]]) -> None:
        for goal in goals:
            queue.track_goal(**goal)

    def bulk(goals: list[dict[str, Any]]) -> None:
        for start in range(0, len(goals), BULK_BATCH):
            queue.track_goals(goals[start : start + BULK_BATCH])

    def apply_async(goals: list[dict[str, Any]]) -> None:
        for body in goals:
            task.apply_async(args=[body])

    def lpush(goals: list[dict[str, Any]]) -> None:
        for _ in goals:
            raw.lpush("bench:raw", message)

    ways: list[tuple[str, str, Callable[[list[dict[str, Any]]], None], Callable[[], Any]]] = [
        ("track_goal", "goalqueue track_goal (validated, 1 Lua call)", single, goal_fields),
        ("track_goals", f"goalqueue track_goals, bulk of {BULK_BATCH}", bulk, goal_fields),
        ("apply_async", "plain Celery apply_async (bare)", apply_async, goal_body),
        ("raw_lpush", "raw redis-py LPUSH loop, same message", lpush, goal_body),
    ]
    timings: dict[str, list[float]] = {key: [] for key, *_ in ways}
    try:
        for _, _, run, make in ways:
            run([make() for _ in range(min(50, n))])  # warm up connections and scripts
        for _ in range(repeats):
            for key, _, run, make in ways:
                goals = [make() for _ in range(n)]
                started = time.perf_counter()
                run(goals)
                timings[key].append((time.perf_counter() - started) / n * 1e6)
    finally:
        queue.close()
        raw.close()
    flush(GOALQUEUE_URL)
    flush(PLAIN_URL)
    rows = [
        Row(
            "enqueue",
            key,
            label,
            round(min(timings[key]), 1),
            "µs/goal",
            {"runs_us": [round(t, 1) for t in timings[key]], "n": n},
        )
        for key, label, _, _ in ways
    ]
    ratios = [a / b for a, b in zip(timings["track_goal"], timings["raw_lpush"], strict=True)]
    rows.append(
        Row(
            "enqueue",
            "track_goal_vs_lpush",
            "track_goal / raw LPUSH, median of interleaved rounds",
            round(statistics.median(ratios), 2),
            "x",
            {"rounds": [round(r, 2) for r in ratios]},
        )
    )
    return rows


# --------------------------------------------------------------------------- memory


DELIVERED_TTL_MS = 24 * 3600 * 1000  # GOALQUEUE_DELIVERED_TTL_SECONDS's default


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory(n: int) -> list[Row]:
    """Redis bytes per queued goal: goalqueue ready and waiting, plain Celery ready."""
    rows = [
        *_goalqueue_memory(n), _goalqueue_single_memory(n), _goalqueue_delivered_memory(n),
        _plain_memory(n),
    ]  # fmt: skip
    flush(GOALQUEUE_URL)
    flush(PLAIN_URL)
    return rows


def _fresh_queue() -> tuple[redis.Redis, GoalQueue]:
    """A client and a queue on the benchmark's emptied goalqueue database."""
    flush(GOALQUEUE_URL)
    client = redis.Redis.from_url(GOALQUEUE_URL, decode_responses=True)
    return client, GoalQueue(broker_url=GOALQUEUE_URL, client=client)


def _enqueue(queue: GoalQueue, n: int) -> None:
    """``n`` goals, ``BULK_BATCH`` at a time."""
    for start in range(0, n, BULK_BATCH):
        queue.track_goals([goal_fields() for _ in range(min(BULK_BATCH, n - start))])


def _goalqueue_memory(n: int) -> list[Row]:
    client, queue = _fresh_queue()
    try:
        empty = used_memory(client)
        _enqueue(queue, n)
        ready = used_memory(client)
        message: str = client.lindex(KEYS.queue, 0)  # type: ignore[assignment]
        entry: str = client.zrange(KEYS.ledger, 0, 0)[0]  # type: ignore[assignment]
        ready_row = Row(
            "memory",
            "goalqueue_ready",
            "goalqueue, ready (queue message + ledger entry)",
            round((ready - empty) / n),
            "B/goal",
            {
                "n": n,
                "keys_bytes_per_goal": round(keys_bytes(client) / n),
                "message_bytes": len(message),
                "ledger_entry_bytes": len(entry),
                "queue_key_bytes_per_goal": round(_usage(client, KEYS.queue) / n),
                "ledger_key_bytes_per_goal": round(_usage(client, KEYS.ledger) / n),
            },
        )
        _park_everything(client)
        waiting = used_memory(client)
        parked = client.zrange(KEYS.waiting, 0, 0)[0]
        waiting_row = Row(
            "memory",
            "goalqueue_waiting",
            "goalqueue, waiting (after one 503)",
            round((waiting - empty) / n),
            "B/goal",
            {
                "n": n,
                "keys_bytes_per_goal": round(keys_bytes(client) / n),
                "waiting_entry_bytes": len(parked),
                "waiting_key_bytes_per_goal": round(_usage(client, KEYS.waiting) / n),
            },
        )
    finally:
        client.close()
    return [ready_row, waiting_row]


def _goalqueue_single_memory(n: int) -> Row:
    """Ready goals enqueued one ``track_goal`` call at a time, as a web app does."""
    flush(GOALQUEUE_URL)
    client = redis.Redis.from_url(GOALQUEUE_URL, decode_responses=True)
    queue = GoalQueue(broker_url=GOALQUEUE_URL, client=client)
    try:
        empty = used_memory(client)
        for _ in range(n):
            queue.track_goal(**goal_fields())
        ready = used_memory(client)
        by_keys = keys_bytes(client)
    finally:
        client.close()
    return Row(
        "memory",
        "goalqueue_ready_single",
        "goalqueue, ready, enqueued by track_goal",
        round((ready - empty) / n),
        "B/goal",
        {"n": n, "keys_bytes_per_goal": round(by_keys / n)},
    )


def _goalqueue_delivered_memory(n: int) -> Row:
    """What Redis keeps per delivered goal once the queue has drained: each goal enqueued, then
    settled as delivered at its first attempt, as a worker does (its marker, and no attempt
    log), each the goal of a new visitor (the visitor index's worst case). The visitor index
    keeps a goal an hour, not the markers' 24: its share of the value is what dropping it frees
    (INFO used_memory, so that each visitor's key counts with its share of Redis's key tables,
    which MEMORY USAGE leaves out), times an hour over the markers' lifetime."""
    client, queue = _fresh_queue()
    try:
        _enqueue(queue, BULK_BATCH)  # load the scripts, and size the connection's buffers
        client.delete(KEYS.queue)
        _deliver_everything(client)
        _drop_visitor_index(client)
        empty = used_memory(client) - _usage_under(client, KEYS.delivered)
        _enqueue(queue, n)
        client.delete(KEYS.queue)  # taken by the workers
        _deliver_everything(client)
        delivered = used_memory(client)
        visitor_keys = _usage_matching(client, KEYS.visitor_prefix + "*")
        markers = _usage_under(client, KEYS.delivered)
        by_keys = keys_bytes(client)
        visitors = delivered - _drop_visitor_index(client)
    finally:
        client.close()
    window = VISITOR_WINDOW_SECONDS * 1000 / DELIVERED_TTL_MS
    kept = n + BULK_BATCH  # the goals whose keys MEMORY USAGE counts: the warm-up's too
    return Row(
        "memory",
        "goalqueue_delivered",
        "goalqueue, delivered (marker + visitor index over 24 h, after the queue drains)",
        round((delivered - empty - visitors) / n + visitors / n * window),
        "B/goal",
        {
            "n": n,
            "keys_bytes_per_goal": round((by_keys - visitor_keys) / kept, 1),
            "marker_key_bytes_per_goal": round(markers / kept, 1),
            "visitor_index_bytes_per_goal": round(visitors / n, 1),
            "visitor_index_bytes_per_goal_over_24h": round(visitors / n * window, 1),
            "visitor_index_key_bytes_per_goal": round(visitor_keys / n, 1),
        },
    )


def _drop_visitor_index(client: redis.Redis) -> int:
    """Delete the visitor index; returns used_memory once Redis has shrunk its key tables (a
    table under a tenth full shrinks within a second or so)."""
    keys = list(client.scan_iter(match=KEYS.visitor_prefix + "*", count=1000))
    for start in range(0, len(keys), BULK_BATCH):
        client.delete(*keys[start : start + BULK_BATCH])
    settled, deadline = used_memory(client), time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now, settled = settled, used_memory(client)
        if now == settled:
            break
    return settled


def _usage_under(client: redis.Redis, key: str) -> int:
    """``MEMORY USAGE`` of ``key`` and of every key under ``key:``."""
    return _usage(client, key) + _usage_matching(client, key + ":*")


def _usage_matching(client: redis.Redis, pattern: str) -> int:
    """``MEMORY USAGE`` summed over the keys that match ``pattern``."""
    return sum(_usage(client, each) for each in client.scan_iter(match=pattern, count=1000))


def _deliver_everything(client: redis.Redis) -> None:
    """Settle every ledger entry as delivered, with a DataFast event id, as a worker does."""
    scripts = SweeperScripts(client, KEYS)
    entries: list[str] = client.zrange(KEYS.ledger, 0, -1)  # type: ignore[assignment]
    for start in range(0, len(entries), BULK_BATCH):
        settlement = Settlement()
        for entry in entries[start : start + BULK_BATCH]:
            event_id = GoalEvent.from_json(entry).event_id
            settlement.delivered(entry, event_id, os.urandom(12).hex(), 0.5)
        scripts.settle(settlement, DELIVERED_TTL_MS)


def _usage(client: redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def keys_bytes(client: redis.Redis) -> int:
    """``MEMORY USAGE`` summed over this database's keys: unlike ``INFO memory`` it does not
    move when other people's tests write to other databases of the same Redis."""
    return sum(_usage(client, key) for key in client.scan_iter(count=1000))


def _park_everything(client: redis.Redis) -> None:
    """Move every ledger entry to the waiting set as a worker does after a 503, and drop the
    queue messages, so that only waiting goals are left."""
    from workers.policy import classify

    answer = httpx.Response(
        503, json={"status": "error", "error": {"code": 503, "message": "Service unavailable"}}
    )
    now = time.time()
    verdict = classify(answer, now=now, max_wait=3600)
    scripts = SweeperScripts(client, KEYS)
    entries: list[str] = client.zrange(KEYS.ledger, 0, -1)  # type: ignore[assignment]
    for start in range(0, len(entries), BULK_BATCH):
        settlement = Settlement()
        for entry in entries[start : start + BULK_BATCH]:
            event = GoalEvent.from_json(entry).attempted(now, 503, verdict.error)
            settlement.park(entry, event, due=now + 3600)
        scripts.settle(settlement, 0)
    client.delete(KEYS.queue)


def _plain_memory(n: int) -> Row:
    flush(PLAIN_URL)
    client = redis.Redis.from_url(PLAIN_URL)
    task = plain_task()
    try:
        task.apply_async(args=[goal_body()])  # declare the queue, open the connection
        empty = used_memory(client)
        for _ in range(n):
            task.apply_async(args=[goal_body()])
        ready = used_memory(client)
        message = client.lindex("celery", 0) or b""
        return Row(
            "memory",
            "plain_ready",
            "plain Celery, ready (queue message)",
            round((ready - empty) / n),
            "B/goal",
            {
                "n": n,
                "keys_bytes_per_goal": round(keys_bytes(client) / n),
                "message_bytes": len(message),
                "queue_key_bytes_per_goal": round(_usage(client, "celery") / n),
            },
        )
    finally:
        client.close()
