"""Poison messages pushed straight into the ``goalqueue`` list, under a real worker.

Each one must end as exactly one ``poison`` dead letter (with a log line naming it), be gone
from the queue and from kombu's unacked bookkeeping, and leave the worker alive and delivering:
a valid goal queued behind it is delivered. Before workers/transport.py and the consumer's guard,
most of these stopped the worker ("Unrecoverable error") or made it restore and re-read the same
message forever.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Producer

from goalqueue import GoalQueue
from goalqueue.deadletters import DeadLetter
from goalqueue.keys import TASK_NAME
from goalqueue.message import template
from goalqueue.sandbox import Sandbox
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS, quick_settings
from tests.helpers.waiting import wait_for
from tests.helpers.workers import WorkerProcess, Workers, worker_env
from workers.transport import Transport, harden

MARK = "poison-marker"


def envelope(body: str, *, headers: object = None, **changes: object) -> str:
    """A kombu envelope like the producer writes, with ``changes`` applied."""
    message: dict[str, object] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers if headers is not None else {"id": MARK, "task": TASK_NAME},
        "properties": {
            "delivery_tag": MARK,
            "delivery_info": {"exchange": "", "routing_key": KEYS.queue},
        },
    }
    message.update(changes)
    return json.dumps({k: v for k, v in message.items() if v is not ...})


VALID = template(KEYS) % (999, MARK, 999)
POISON: dict[str, str | bytes] = {
    "garbage bytes": b"\x00\xff\xfe\x1b[2J not json " + MARK.encode(),
    "truncated JSON": VALID[: len(VALID) * 2 // 3],
    "JSON that is not an object": json.dumps([MARK, 1]),
    "envelope without properties": json.dumps({"body": MARK}),
    "envelope with a bad delivery_info": envelope(
        f'[["{MARK}", 1], {{}}, {{}}]', properties={"delivery_tag": MARK, "delivery_info": "x"}
    ),
    "body that is not JSON": envelope(f"not json {MARK}"),
    "arguments of the wrong types": envelope(f'[[1, 2, "{MARK}"], {{}}, {{}}]'),
    "one argument that is not a sequence": envelope(f'[["{MARK}"], {{}}, {{}}]'),
    "huge payload (5 MB)": envelope(json.dumps([[MARK + "x" * 5_000_000, "seq"], {}, {}])),
    "unknown task name": envelope('[["e", 1], {}, {}]', headers={"id": MARK, "task": "nope"}),
    "no headers": envelope(f'[["{MARK}", 1], {{}}, {{}}]', headers=...),
    "headers without a task id": envelope(
        f'[["{MARK}", 1], {{}}, {{}}]', headers={"task": TASK_NAME}
    ),
}
CRASH_SIGNS = ("Unrecoverable error", "Connection to broker lost", "Frequent restarts")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def worker(
    tmp_path_factory: pytest.TempPathFactory, server: RedisServer, sandbox: Sandbox
) -> Iterator[WorkerProcess]:
    pool = Workers(
        tmp_path_factory.mktemp("workers"), worker_env(quick_settings(server.url), sandbox.url)
    )
    try:
        yield pool.start("-c", "2")
    finally:
        for started in pool.started:
            started.kill()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


def poison_letters(client: redis.Redis) -> dict[str, DeadLetter]:
    letters = (DeadLetter.from_json(raw) for raw in client.hvals(KEYS.dead))
    return {letter.event_id: letter for letter in letters if letter.reason == "poison"}


@pytest.mark.parametrize("kind", list(POISON))
def test_a_poison_message_is_dead_lettered_once_and_the_worker_goes_on(
    kind: str, worker: WorkerProcess, sandbox: Sandbox, server: RedisServer, client: redis.Redis
) -> None:
    # Given a worker delivering goals
    queue = GoalQueue(settings=quick_settings(server.url))
    before = set(poison_letters(client))
    log_before = len(worker.output())
    # When a poison message lands in the queue, with a valid goal behind it
    client.lpush(KEYS.queue, POISON[kind])
    goal = queue.track_goal("visitor", "signup")

    # Then the goal behind it is delivered
    wait_for(lambda: goal in {e.idempotency_key for e in sandbox.events(status=200)}, 30)
    # And the poison message is one dead letter that keeps what was pushed
    wait_for(lambda: len(set(poison_letters(client)) - before) == 1, 30)
    (new,) = set(poison_letters(client)) - before
    letter = poison_letters(client)[new]
    assert MARK in (letter.raw or ""), letter
    assert letter.error
    # And the worker said so in its log, and is still running, without a restart
    log = worker.output()[log_before:]
    assert re.search(rf"dead-lettered .*{new}", log), log[-2000:]
    assert worker.process.poll() is None
    assert not [sign for sign in CRASH_SIGNS if sign in log], log[-3000:]
    # And nothing of it is left to come back: not in the queue, not in kombu's unacked messages
    wait_for(lambda: client.llen(KEYS.queue) == 0 and client.hlen(KEYS.unacked) == 0, 10)
    assert len(set(poison_letters(client)) - before) == 1


def test_task_events_are_published_through_one_redis_client_per_channel(redis_url: str) -> None:
    # Given a write connection switched to the hardened transport, as the worker's are
    subscriber = redis.Redis.from_url(redis_url).pubsub()
    with Connection(redis_url) as connection:
        harden(connection)
        assert connection.get_transport_cls() is Transport
        channel = connection.default_channel
        subscriber.psubscribe("*celeryev*")
        subscriber.get_message(timeout=1)
        # When it publishes two task events
        producer = Producer(channel, Exchange("celeryev", type="fanout"))
        for n in range(2):
            producer.publish({"n": n}, routing_key="task.succeeded")
        # Then both arrive, and the channel built one client for them, not one per event
        received = [subscriber.get_message(timeout=2) for _ in range(2)]
        assert all(m and m["type"] == "pmessage" for m in received), received
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
    subscriber.close()


def test_a_message_with_a_sequence_never_handed_out_is_poison_and_moves_nothing(
    worker: WorkerProcess, sandbox: Sandbox, server: RedisServer, client: redis.Redis
) -> None:
    # Given a worker that has delivered a first batch (so `taken` and a checkpoint are set)
    queue = GoalQueue(settings=quick_settings(server.url))
    visibility = quick_settings(server.url).visibility_timeout_seconds
    first = queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(50)])
    wait_for(lambda: set(first) <= {e.idempotency_key for e in sandbox.events(status=200)}, 30)
    before = set(poison_letters(client))
    log_before = len(worker.output())
    # When messages with sequences no enqueue handed out land in the queue: 10^30 (beyond what
    # a Lua number holds exactly) and 10^15 (beyond the last sequence), each taken by a task or
    # claimed by another task's TAKE
    for seq, event_id in ((10**30, "absurd-sequence"), (10**15, "future-sequence")):
        client.lpush(KEYS.queue, template(KEYS) % (seq, event_id, seq))

    # Then each is one poison dead letter that keeps the message
    wait_for(lambda: len(set(poison_letters(client)) - before) == 2, 30)
    raws = [poison_letters(client)[new].raw or "" for new in set(poison_letters(client)) - before]
    assert [raw for raw in raws if "absurd-sequence" in raw and "future-sequence" not in raw]
    assert [raw for raw in raws if "future-sequence" in raw and "absurd-sequence" not in raw]
    # And `taken` stays a sequence that was handed out
    assert 0 < int(client.get(KEYS.taken) or 0) <= int(client.get(KEYS.seq) or 0)

    # When the reconciler has seen every checkpoint for longer than the visibility timeout
    def reconciler_ready() -> bool:
        """every checkpoint is older than the visibility timeout"""
        newer = client.zrangebyscore(KEYS.checkpoints, time.time() - visibility, "+inf")
        return client.zcard(KEYS.checkpoints) > 0 and not newer

    wait_for(reconciler_ready, 30)
    # And a normal batch is delivered through a DataFast that takes a moment to answer
    sandbox.set_faults(latency_ms=100)
    try:
        last_before = int(client.get(KEYS.seq) or 0)
        retried_before = int(client.hget(KEYS.metrics, "transient") or 0)
        batch = queue.track_goals([{"visitor_id": f"w{i}", "name": "signup"} for i in range(200)])
        wait_for(lambda: set(batch) <= {e.idempotency_key for e in sandbox.events(status=200)}, 30)
        wait_for(lambda: client.zcard(KEYS.ledger) == 0, 30)
    finally:
        sandbox.clear_faults()
    # Then nothing was re-queued: every sequence handed out since is the batch's own, or a
    # retry's (the sandbox's server now and then closes a kept-alive connection as a request
    # goes out on it: a connection_reset, retried after backoff under a sequence of its own)
    retried = int(client.hget(KEYS.metrics, "transient") or 0) - retried_before
    assert int(client.get(KEYS.seq) or 0) == last_before + len(batch) + retried
    assert "re-queued" not in worker.output()[log_before:]
    assert sandbox.stats().duplicates == 0
