"""Enqueueing again is always safe: an event id goalqueue knows is never enqueued twice, and an
error says which goals Redis confirmed and whether the others may be in it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from goalqueue import GoalQueue, InvalidGoal, MaybeEnqueued, NotEnqueued
from goalqueue.config import Settings
from goalqueue.keys import PER_CALL
from goalqueue.rounds import Round
from goalqueue.sandbox import Sandbox
from tests.helpers.proxies import SlowProxy
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS, quick_settings
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers, worker_env

ORDER = uuid.UUID("6f1d7c42-54b5-4f5b-a0e4-0a4f3c55b9de")


def order_goal_id(order: int) -> str:
    """What an app would pass: a stable id per order, so a retried job reuses it."""
    return str(uuid.uuid5(ORDER, str(order)))


def accepted(sandbox: Sandbox, event_id: str) -> int:
    return sum(1 for event in sandbox.events(status=200) if event.idempotency_key == event_id)


def test_the_same_event_id_is_enqueued_once(queue: GoalQueue, redis_client: redis.Redis) -> None:
    # Given a goal with the caller's own event id
    event_id = order_goal_id(1)
    # When it is tracked twice, and once more in a bulk with another goal
    first = queue.track_goal("v", "purchase", event_id=event_id)
    again = queue.track_goal("v", "purchase", event_id=event_id)
    bulk = queue.track_goals(
        [
            {"visitor_id": "v", "name": "purchase", "event_id": event_id},
            {"visitor_id": "w", "name": "x"},
        ]
    )
    # Then the same id comes back each time, and Redis holds one copy of it and the other goal
    assert first == again == bulk[0] == event_id
    assert redis_client.llen(KEYS.queue) == 2 and redis_client.zcard(KEYS.ledger) == 2
    assert redis_client.smembers(KEYS.pending) == {event_id, bulk[1]}


@pytest.mark.parametrize("event_id", ["order-42", 42, "", "6f1d7c42-54b5"])
def test_an_event_id_must_be_a_uuid(queue: GoalQueue, event_id: object) -> None:
    with pytest.raises(InvalidGoal) as raised:
        queue.track_goal("v", "purchase", event_id=event_id)  # type: ignore[arg-type]
    assert list(raised.value.errors) == ["event_id"]


def test_a_goal_enqueued_again_after_delivery_or_death_is_not_sent_again(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a worker, a goal tracked twice with one id, and a bot's goal (DataFast answers 400)
    sandbox.add_bots("bot")
    workers.start("-c", "2")
    good, dead = order_goal_id(2), order_goal_id(3)
    for _ in range(2):
        queue.track_goal("v", "purchase", event_id=good)
        queue.track_goal("bot", "purchase", event_id=dead)
    wait_for(lambda: accepted(sandbox, good) == 1 and redis_client.hexists(KEYS.dead, dead))
    # When both are tracked twice more, delivered and dead-lettered as they are
    for _ in range(2):
        queue.track_goal("v", "purchase", event_id=good)
        queue.track_goal("bot", "purchase", event_id=dead)
    # Then nothing was enqueued, so nothing more is sent: one request each, ever
    assert redis_client.llen(KEYS.queue) == 0 and redis_client.zcard(KEYS.ledger) == 0
    assert redis_client.scard(KEYS.pending) == 0
    requests = [event.idempotency_key for event in sandbox.events()]
    assert requests.count(good) == 1 and requests.count(dead) == 1


def test_a_retry_after_an_ambiguous_timeout_is_delivered_once(
    redis_server: Callable[..., RedisServer], sandbox: Sandbox, tmp_path: Path
) -> None:
    # Given a producer whose Redis runs every command but answers after the enqueue timeout
    server = redis_server()
    proxy = SlowProxy(server.port, delay=0.0)
    settings = Settings(broker_url=f"redis://127.0.0.1:{proxy.port}/0", enqueue_timeout_seconds=0.3)
    slow = GoalQueue(settings=settings)
    slow.track_goal("v", "warm-up")
    proxy.delay = 0.5
    # When a goal's enqueue times out, the error says it may be enqueued, with its id
    with pytest.raises(MaybeEnqueued) as raised:
        slow.track_goal("v", "purchase")
    proxy.close()
    (event_id,) = raised.value.event_ids
    assert raised.value.enqueued == [] and raised.value.unconfirmed == [event_id]
    # And the app retries with that id, on a Redis that answers
    retry = GoalQueue(broker_url=server.url)
    assert retry.track_goal("v", "purchase", event_id=event_id) == event_id
    # Then a worker delivers the goal once
    pool = Workers(tmp_path, worker_env(quick_settings(server.url), sandbox.url))
    try:
        pool.start()
        wait_for(lambda: accepted(sandbox, event_id) == 1)
        wait_for(
            lambda: server.client().llen(KEYS.queue) == 0 and not server.client().zcard(KEYS.ledger)
        )
    finally:
        pool.stop_all()
    assert accepted(sandbox, event_id) == 1 and sandbox.stats().duplicates == 0


def test_a_full_redis_refuses_a_bulk_whole_and_the_retry_enqueues_each_goal_once(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Given a Redis at its memory limit (noeviction)
    server = redis_server("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    client = server.client()
    filler = "x" * 10_000
    try:
        for i in range(1000):
            client.set(f"filler:{i}", filler)
    except redis.ResponseError:
        pass
    queue = GoalQueue(broker_url=server.url)
    goals = [{"visitor_id": f"v{i}", "name": "signup"} for i in range(PER_CALL * 2 + 100)]
    # When a bulk is tracked
    with pytest.raises(NotEnqueued) as raised:
        queue.track_goals(goals)
    # Then nothing went in, and the error names every goal as not enqueued
    assert client.zcard(KEYS.ledger) == 0 and client.llen(KEYS.queue) == 0
    assert raised.value.enqueued == [] and len(raised.value.unconfirmed) == len(goals)
    assert "maxmemory" in str(raised.value)
    # And once Redis has room, the retry with the same ids enqueues each goal once
    client.config_set("maxmemory", "0")
    ids = raised.value.event_ids
    again = queue.track_goals([{**goal, "event_id": i} for goal, i in zip(goals, ids, strict=True)])
    assert again == ids
    assert client.zcard(KEYS.ledger) == len(goals) == client.llen(KEYS.queue)


def test_a_bulk_error_names_the_goals_redis_confirmed() -> None:
    # Given a bulk of three chunks whose second chunk Redis refused
    pairs = [(f"id-{i}", "{}") for i in range(PER_CALL * 2 + 1)]
    this = Round(pairs, Settings())
    oom = redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
    # When the replies are read
    shortfall = this.shortfall([[1] * PER_CALL, oom, [0]])
    assert shortfall is not None
    error = this.error(shortfall)
    # Then the error says exactly which went in: the first and the third chunk
    confirmed = [event_id for event_id, _ in pairs[:PER_CALL]] + [pairs[-1][0]]
    assert isinstance(error, NotEnqueued)
    assert error.enqueued == confirmed
    assert error.unconfirmed == [event_id for event_id, _ in pairs[PER_CALL:-1]]
    assert f"could not enqueue {PER_CALL} goal(s)" in str(error)
    # And a call whose goals were all in the first chunk was confirmed whole
    assert not shortfall.leaves(pairs[:PER_CALL]) and shortfall.leaves(pairs[PER_CALL:])
