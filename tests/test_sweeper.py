"""The sweeper and the reconciler against the real Redis: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import redis
import redis.asyncio

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from tests.helpers.messages import pop_message
from tests.helpers.settings import KEYS
from workers.scripts import Bound, WorkerScripts
from workers.sweeper import Sweeper


def queued_ids(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(KEYS.queue, 0, -1)]


def take(client: redis.Redis, settings: Settings, event_id: str, seq: int, now: float) -> str:
    """A worker starting on a message: what TAKE says about it."""

    async def take_it() -> str:
        worker_client = redis.asyncio.Redis.from_url(settings.broker_url, decode_responses=True)
        try:
            scripts = WorkerScripts(worker_client, KEYS, Bound.of(settings))
            take = await scripts.take(now, goal=(event_id, seq), claim=0, patient=True)
        finally:
            await worker_client.aclose()
        return take.copies[0].standing.value

    return asyncio.run(take_it())


def test_a_goal_lost_right_after_brpop_is_requeued_after_the_visibility_timeout(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given three goals, the first taken off the queue by a worker that died at once
    lost, started, untouched = (queue.track_goal("v", "signup") for _ in range(3))
    now = time.time()
    assert pop_message(redis_client)[0] == lost
    # And a live worker that started on the second
    event_id, seq = pop_message(redis_client)
    assert (event_id, take(redis_client, settings, event_id, seq, now)) == (started, "send")
    sweeper = Sweeper(settings, redis_client)

    # When the reconciler runs before the visibility timeout, nothing moves
    assert sweeper.sweep_once(now) == (0, 0)
    assert sweeper.sweep_once(now + settings.visibility_timeout_seconds - 0.1) == (0, 0)
    # Then after it, both taken-but-unsettled goals come back, and the untouched one stays put
    assert sweeper.sweep_once(now + settings.visibility_timeout_seconds + 0.1) == (0, 2)
    assert queued_ids(redis_client) == [started, lost, untouched]
    assert redis_client.zcard(KEYS.ledger) == 3
    # And the reconciler does not repeat itself for goals it already re-queued
    assert sweeper.sweep_once(now + settings.visibility_timeout_seconds + 0.2) == (0, 0)


def test_a_backlog_nobody_has_taken_is_never_requeued(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(1000)])
    sweeper = Sweeper(settings, redis_client)
    now = time.time()
    for later in (0, 3600, 86400):
        assert sweeper.sweep_once(now + later) == (0, 0)
    assert redis_client.llen(KEYS.queue) == 1000


def test_the_old_copy_of_a_requeued_goal_is_dropped(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given a goal re-queued by the reconciler while kombu still held its first message
    event_id = queue.track_goal("v", "signup")
    first = pop_message(redis_client)
    now = time.time()
    take(redis_client, settings, *first, now)
    sweeper = Sweeper(settings, redis_client)
    sweeper.sweep_once(now)
    sweeper.sweep_once(now + settings.visibility_timeout_seconds + 1)
    second = pop_message(redis_client)
    assert second[0] == event_id and second[1] > first[1]
    # When kombu restores the first message too, only the new one is worth sending
    assert take(redis_client, settings, *first, now) == "gone"
    assert take(redis_client, settings, *second, now) == "send"


def test_many_sweepers_at_once_move_each_due_goal_exactly_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Given 3,000 goals due in the waiting set
    now = time.time()
    waiting = {
        GoalEvent(f"id-{i}", "v", "signup", enqueued_at=now).to_json(): now - 1 for i in range(3000)
    }
    redis_client.zadd(KEYS.waiting, waiting)  # type: ignore[arg-type]
    # When eight sweepers race
    sweepers = [Sweeper(settings, redis.Redis.from_url(settings.broker_url)) for _ in range(8)]
    threads = [threading.Thread(target=s.sweep_once, args=(now,)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then each goal is on the queue once, with a ledger entry under a distinct sequence
    ids = queued_ids(redis_client)
    assert len(ids) == 3000 and len(set(ids)) == 3000
    assert redis_client.zcard(KEYS.waiting) == 0
    assert redis_client.zcard(KEYS.ledger) == 3000


def test_nothing_is_released_early_or_while_paused(
    settings: Settings, redis_client: redis.Redis
) -> None:
    now = time.time()
    for i, due in enumerate((now + 10, now - 1, now - 2)):
        event = GoalEvent(f"id-{i}", "v", "signup", enqueued_at=now)
        redis_client.zadd(KEYS.waiting, {event.to_json(): due})
    redis_client.hset(KEYS.pause, mapping={"until": now + 5, "reason": "rate_limited", "key": ""})
    sweeper = Sweeper(settings, redis_client)
    assert sweeper.sweep_once(now) == (0, 0)
    # The pause has ended: one probe, the earliest due
    assert sweeper.sweep_once(now + 5) == (1, 0)
    assert queued_ids(redis_client) == ["id-2"]
    assert redis_client.get(KEYS.probe) == "id-2"
    assert sweeper.sweep_once(now + 6) == (0, 0)
    # The probe succeeded
    redis_client.delete(KEYS.pause, KEYS.probe)
    assert sweeper.sweep_once(now + 6) == (1, 0)
    assert sweeper.sweep_once(now + 10) == (1, 0)


def test_a_taken_beyond_the_last_sequence_is_dropped_not_acted_on(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given unsettled goals, and a `taken` and a checkpoint no TAKE could have written (left by
    # a stray write, or by a worker before TAKE checked sequences)
    queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(3)])
    now = time.time()
    redis_client.set(KEYS.taken, "1e+30")
    redis_client.zadd(KEYS.checkpoints, {"1e+30": now - 3600})
    # When the reconciler runs, long after
    sweeper = Sweeper(settings, redis_client)
    assert sweeper.sweep_once(now + 3600) == (0, 0)
    # Then it re-queued nothing, and dropped both: the next TAKE sets `taken` again
    assert redis_client.get(KEYS.taken) is None
    assert redis_client.zcard(KEYS.checkpoints) == 0
    assert sweeper.sweep_once(now + 7200) == (0, 0)
    assert redis_client.llen(KEYS.queue) == 3
    event_id, seq = pop_message(redis_client)
    assert take(redis_client, settings, event_id, seq, now) == "send"
    assert int(redis_client.get(KEYS.taken) or 0) == seq


def test_a_ledger_entry_scored_beyond_the_last_sequence_is_requeued_under_its_own(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given a goal whose ledger entry a stray write scored far beyond the last sequence, its
    # message gone: no checkpoint would ever reach it
    event_id = queue.track_goal("v", "signup")
    (entry,) = redis_client.zrange(KEYS.ledger, 0, -1)
    redis_client.zadd(KEYS.ledger, {entry: 10**30})
    redis_client.delete(KEYS.queue)
    # When the reconciler runs
    assert Sweeper(settings, redis_client).sweep_once() == (0, 1)
    # Then the goal is queued again, under the next sequence, and a worker sends it
    assert pop_message(redis_client) == (event_id, 2)
    assert redis_client.zscore(KEYS.ledger, entry) == 2
    assert take(redis_client, settings, event_id, 2, time.time()) == "send"


def test_a_stall_does_not_count_against_the_goals_workers_hold(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given a goal a worker has taken, and a message kombu holds unacknowledged
    event_id = queue.track_goal("v", "signup")
    now = time.time()
    assert take(redis_client, settings, *pop_message(redis_client), now) == "send"
    sweeper = Sweeper(settings, redis_client)
    sweeper.sweep_once(now)
    redis_client.zadd(KEYS.unacked_index, {"7": now})
    # When the next reconciler runs after a stall (Redis frozen or down: nobody reconciled for
    # 100 s, on Redis's clock), past the visibility timeout on the workers' clocks
    seconds, micros = redis_client.time()
    redis_client.set(KEYS.reconciled, seconds + micros / 1e6 - 100)
    later = now + settings.visibility_timeout_seconds + 1
    # Then nothing is re-queued: the goal's lease runs from when Redis answered again
    assert sweeper.sweep_once(later) == (0, 0)
    assert (redis_client.zscore(KEYS.unacked_index, "7") or 0) >= now + 99
    # And once the visibility timeout has passed since, it is
    assert sweeper.sweep_once(later + 100) == (0, 1)
    assert pop_message(redis_client)[0] == event_id
