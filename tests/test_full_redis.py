"""A Redis at ``maxmemory`` with ``noeviction``, as the README advises: delivery goes on.

Redis then refuses every MULTI and every command that may grow memory. Before the fix a worker
died within a second ("Unrecoverable error: OutOfMemoryError": kombu acks in a MULTI), a worker
started at OOM died in kombu's restore sweep (its lock is a SET), and goals stayed queued until
someone raised maxmemory, though draining is what frees memory. ``goalqueue stats`` answered
"cannot reach Redis" and the exporter served ``goalqueue_redis_up 0`` alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from goalqueue import GoalQueue, NotEnqueued, stats
from goalqueue.cli import main
from goalqueue.config import get_settings
from goalqueue.deadletters import DeadLetter
from goalqueue.errors import EnqueueError
from goalqueue.event import GoalEvent
from goalqueue.keys import PER_CALL
from goalqueue.metrics.collector import GoalQueueCollector
from goalqueue.sandbox import Sandbox
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS, quick_settings
from tests.helpers.waiting import wait_for
from tests.helpers.workers import WorkerProcess, Workers, worker_env
from workers.scripts import Bound, Defer, Settlement, UnackedScripts, WorkerScripts
from workers.sweeper import Sweeper
from workers.transport import bury

# About 2,500 goals fill it (Redis itself takes about 1 MB); no AOF, to fill it fast.
FULL = ("--maxmemory", "3mb", "--maxmemory-policy", "noeviction", "--appendonly", "no")
CRASH_SIGNS = ("Unrecoverable error", "OutOfMemoryError")


def fill(queue: GoalQueue) -> int:
    """Enqueue goals until Redis refuses them; returns how many it took."""
    taken = 0
    while True:
        try:
            queue.track_goals(
                [{"visitor_id": f"v{taken + i}", "name": "signup"} for i in range(50)]
            )
        except EnqueueError:
            return taken
        taken += 50


def scrape(client: redis.Redis) -> dict[str, float]:
    """What the exporter serves, by series (labels left out)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GoalQueueCollector(client, KEYS))
    text = generate_latest(registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def full(redis_server: Callable[..., RedisServer]) -> Iterator[RedisServer]:
    yield redis_server(*FULL)


@pytest.fixture
def client(full: RedisServer) -> Iterator[redis.Redis]:
    client = full.client()
    yield client
    client.close()


@pytest.fixture
def start_worker(
    full: RedisServer, sandbox: Sandbox, tmp_path: Path
) -> Iterator[Callable[[], WorkerProcess]]:
    pool = Workers(tmp_path, worker_env(quick_settings(full.url), sandbox.url))
    yield lambda: pool.start("-c", "4")
    pool.stop_all()


def drained(client: redis.Redis) -> Callable[[], bool]:
    def check() -> bool:
        """every goal settled, and kombu holds no unacknowledged message"""
        return client.zcard(KEYS.ledger) == 0 and client.hlen(KEYS.unacked) == 0

    return check


def has_room(client: redis.Redis) -> Callable[[], bool]:
    def check() -> bool:
        """Redis is no longer full"""
        memory = stats.memory(client)
        return memory is not None and not memory.full

    return check


def enqueues(queue: GoalQueue) -> Callable[[], bool]:
    def check() -> bool:
        """a producer enqueues again (memory the drain freed may take a moment to show)"""
        try:
            queue.track_goal("v", "after")
        except NotEnqueued:
            return False
        return True

    return check


def assert_delivered_once(sandbox: Sandbox, goals: int, worker: WorkerProcess) -> None:
    counts = sandbox.stats()
    assert (counts.accepted, counts.duplicates) == (goals, 0)
    assert worker.process.poll() is None
    assert not [sign for sign in CRASH_SIGNS if sign in worker.output()], worker.output()[-3000:]


def test_a_worker_started_on_a_full_redis_starts_and_drains_it_and_stats_say_it_was_full(
    full: RedisServer,
    client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[[], WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a full Redis: goals were enqueued until it refused more
    goals = fill(GoalQueue(settings=quick_settings(full.url)))
    memory = stats.memory(client)
    assert memory is not None and memory.full
    # When an operator looks: then goalqueue stats and the exporter say Redis is full
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", full.url)
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["stats", "--json"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert (figures["queued"], figures["redis_full"]) == (goals, True)
    assert figures["redis_maxmemory"] == 3 * 1024 * 1024
    served = scrape(client)
    assert (served["goalqueue_redis_up"], served["goalqueue_redis_full"]) == (1, 1)
    assert served["goalqueue_queued_goals"] == goals

    # When a worker starts on it
    worker = start_worker()

    # Then it drains the backlog: every goal delivered, once
    wait_for(drained(client), 60)
    assert_delivered_once(sandbox, goals, worker)
    # And Redis has room again: memory falls (the clients' buffers shrink within seconds), and
    # producers enqueue again
    wait_for(has_room(client), 30)
    assert scrape(client)["goalqueue_redis_full"] == 0
    wait_for(enqueues(GoalQueue(settings=quick_settings(full.url))), 30)


def test_workers_keep_draining_while_redis_fills_up_under_them(
    full: RedisServer,
    client: redis.Redis,
    sandbox: Sandbox,
    start_worker: Callable[[], WorkerProcess],
) -> None:
    # Given a worker delivering, and a DataFast slow enough that a backlog builds up
    worker = start_worker()
    sandbox.set_faults(latency_ms=100)
    # When producers fill Redis until it refuses more
    goals = fill(GoalQueue(settings=quick_settings(full.url)))
    # Then the worker keeps running and drains it all: every goal delivered, once
    wait_for(drained(client), 60)
    assert_delivered_once(sandbox, goals, worker)
    wait_for(has_room(client), 30)


def test_every_script_a_worker_runs_runs_on_a_full_redis_and_the_sweep_holds_back(
    full: RedisServer, client: redis.Redis
) -> None:
    # Given a full Redis, and a goal the sweeper would move back from the waiting set
    settings = quick_settings(full.url)
    queue = GoalQueue(settings=settings)
    queue.track_goal("v", "waiting")
    (entry,) = client.zrange(KEYS.ledger, 0, -1)
    client.zrem(KEYS.ledger, entry)
    client.rpop(KEYS.queue)
    client.zadd(KEYS.waiting, {entry: 0})
    goals = fill(queue)
    now = time.time()

    async def worker_side() -> tuple[int, int]:
        worker = redis.asyncio.Redis.from_url(full.url, decode_responses=True)
        scripts = WorkerScripts(
            worker, KEYS, Bound(settings.key_fingerprint, 1000, 0, 60_000, (60_000, 60_000))
        )
        try:
            # When a worker takes goals (TAKE claims them off the queue)
            take = await scripts.take(now, goal=None, claim=10, patient=False)
            # And records their outcomes (SETTLE) and a pause (DEFER), in one pipeline
            settlement = Settlement()
            first, second, *rest = take.copies
            event = GoalEvent.from_json(first.entry)
            settlement.bury(first.entry, DeadLetter.of(event, "bad_request"))
            settlement.park(second.entry, GoalEvent.from_json(second.entry), due=now + 60)
            for copy in rest:
                settlement.delivered(copy.entry, copy.event_id, "remote", 0.1)
            await scripts.load()
            async with worker.pipeline(transaction=False) as pipe:
                scripts.settle(settlement, pipe)
                scripts.defer(Defer(now + 1, "suspended", 0, halve=False), now, pipe)
                owned, _ = await pipe.execute()
            return len(take.copies), owned
        finally:
            await worker.aclose()

    # Then Redis runs them all
    assert asyncio.run(worker_side()) == (10, 10)
    assert client.hlen(KEYS.dead) == 1 and client.hget(KEYS.pause, "reason") == "suspended"
    client.delete(KEYS.pause)
    # And a poison message is dead-lettered
    assert bury(client, KEYS, "garbage", "unreadable") in client.hkeys(KEYS.dead)
    # And kombu's bookkeeping of a message it took runs too (UNACKED, RESTORE)
    kombu = UnackedScripts(client, "unacked", "unacked_index")
    kombu.record(7, '["message", "", "goalqueue"]', now)
    assert kombu.restore(7, '["message", "", "goalqueue"]', [("restored", "message")], False)
    assert client.lrange("restored", 0, -1) == ["message"]
    # And the sweeper runs, but moves no waiting goal onto a queue this long (more than
    # PER_CALL messages): a sweep would only fill Redis further
    assert client.llen(KEYS.queue) > PER_CALL
    memory = stats.memory(client)
    assert memory is not None and memory.full
    sweeper = Sweeper(settings, client)
    assert sweeper.sweep_once(now + 3600) == (0, 0)
    assert client.zscore(KEYS.waiting, entry) == 0
    # And once workers have taken the queue down below PER_CALL, it moves them back
    client.ltrim(KEYS.queue, 0, PER_CALL // 2)
    assert sweeper.sweep_once(now + 3600)[0] >= 1
    assert goals > PER_CALL
