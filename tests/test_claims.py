"""A task's claims: the goals its TAKE takes off the queue, delivered at once on the event loop,
each outcome recorded as its answer arrives.

Real Redis and the real engine (its own event loop thread), DataFast faked with
httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import replace

import httpx
import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.message import template
from tests.helpers.datafast import FakeDataFast, error, ok
from tests.helpers.markers import marker
from tests.helpers.messages import pop_message
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from workers.delivery import Delivery
from workers.engine import Engine
from workers.recording import Record, Recorder


def enqueue(queue: GoalQueue, n: int) -> list[str]:
    return [queue.track_goal("v", f"goal_{i}") for i in range(n)]


class Claimed(list[Delivery]):
    """Collects what became of each claimed goal (the engine's ``announce`` hook)."""

    def results(self) -> dict[str, str]:
        return {delivery.event_id: delivery.summary for delivery in self}


def test_a_task_claims_queued_goals_and_delivers_each_once(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given six queued goals, one of them handed to a task
    ids = enqueue(queue, 6)
    api, claimed = FakeDataFast(), Claimed()
    engine = engines(settings, api, announce=claimed.append)
    # When the task delivers it
    own = engine.run(*pop_message(redis_client))
    engine.wait()
    # Then its TAKE claimed the other five, and every goal is delivered once
    assert own.event_id == ids[0] and own.summary == "delivered"
    assert claimed.results() == dict.fromkeys(ids[1:], "delivered")
    assert sorted(r.headers["idempotency-key"] for r in api.requests) == sorted(ids)
    assert redis_client.llen(KEYS.queue) == 0
    assert redis_client.zcard(KEYS.ledger) == 0
    assert redis_client.get(KEYS.delivered_count) == "6"
    assert redis_client.get(KEYS.taken) == redis_client.get(KEYS.seq)


def test_claims_never_take_more_than_the_room_left_in_flight(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given room for 4 requests in flight, and 10 queued goals
    enqueue(queue, 10)
    gate = threading.Event()
    in_flight, most = 0, 0

    async def held_back(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await until(gate)
        in_flight -= 1
        return ok()

    engine = engines(replace(settings, max_in_flight=4), held_back)
    # When a task takes a goal while DataFast holds every answer
    task = pop_message(redis_client)
    first = engine.submit(*task)
    wait_for(lambda: in_flight == 4, 5)
    # Then its TAKE claimed only three more: the other six wait in the queue
    assert redis_client.llen(KEYS.queue) == 6
    gate.set()
    assert first.result(timeout=10).summary == "delivered"
    engine.wait()
    assert most == 4


def test_a_claim_leaves_messages_that_are_not_goals_for_kombu(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given a queued goal behind a message that is not a goal message (kombu will bury it)
    goal = enqueue(queue, 2)
    own = pop_message(redis_client)
    redis_client.rpush(KEYS.queue, "not a task message")
    claimed = Claimed()
    engine = engines(settings, FakeDataFast(), announce=claimed.append)
    # When the task's TAKE claims
    assert engine.run(*own).summary == "delivered"
    engine.wait()
    # Then both goals were delivered and the other message is back at the consuming end
    assert claimed.results() == {goal[1]: "delivered"}
    assert redis_client.lrange(KEYS.queue, 0, -1) == ["not a task message"]


def test_a_stale_copy_among_the_claims_is_dropped_and_the_live_one_delivered(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given a goal queued twice: re-queued under sequence 2, its first copy's sequence 1 no
    # longer owns the ledger entry
    (event_id,) = enqueue(queue, 1)
    (entry,) = redis_client.zrange(KEYS.ledger, 0, -1)
    redis_client.zadd(KEYS.ledger, {entry: redis_client.incr(KEYS.seq)})
    redis_client.lpush(KEYS.queue, template(KEYS) % (2, event_id, 2))
    api, claimed = FakeDataFast(), Claimed()
    engine = engines(settings, api, announce=claimed.append)
    # When one TAKE holds both copies
    own = engine.run(*pop_message(redis_client))
    engine.wait()
    # Then DataFast saw the goal once
    assert sorted([own.result, *claimed.results().values()]) == ["delivered", "stale copy"]
    assert len(api.requests) == 1


def test_answers_are_recorded_as_they_arrive_not_after_the_slowest_request(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given a task and one claimed goal, DataFast holding the task's own answer back
    slow, fast = enqueue(queue, 2)
    gate = threading.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["idempotency-key"] == slow:
            await until(gate)
        return ok()

    engine = engines(settings, answer)
    own = engine.submit(*pop_message(redis_client))
    # Then the fast goal is on record while the slow one is still in flight
    wait_for(lambda: marker(redis_client, fast), 5)
    assert marker(redis_client, slow) is None
    gate.set()
    assert own.result(timeout=10).summary == "delivered"


def test_a_429_among_the_claims_pauses_delivery_and_parks_only_that_goal(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given three goals, DataFast rate-limiting the second
    ids = enqueue(queue, 3)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["idempotency-key"] == ids[1]:
            return error(429, "slow down", **{"Retry-After": "30"})
        return ok()

    claimed = Claimed()
    engine = engines(settings, answer, announce=claimed.append)
    own = engine.run(*pop_message(redis_client))
    engine.wait()
    # Then the others are delivered, the limited one waits, and delivery is paused
    assert own.summary == "delivered"
    assert claimed.results() == {ids[1]: "waiting (rate_limited)", ids[2]: "delivered"}
    assert redis_client.zcard(KEYS.waiting) == 1
    assert redis_client.hget(KEYS.pause, "reason") == "rate_limited"


def test_a_take_while_paused_sends_one_probe_and_holds_the_rest(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given a pause that has just ended, and four queued goals
    ids = enqueue(queue, 4)
    redis_client.hset(KEYS.pause, mapping={"until": 0, "reason": "rate_limited", "streak": 1})
    api, claimed = FakeDataFast(), Claimed()
    engine = engines(settings, api, announce=claimed.append)
    # When one task's TAKE takes them all
    own = engine.run(*pop_message(redis_client))
    engine.wait()
    # Then exactly one goal tested the API; it succeeded, so the pause is over
    assert own.summary == "delivered"
    assert claimed.results() == dict.fromkeys(ids[1:], "held (paused)")
    assert [r.headers["idempotency-key"] for r in api.requests] == ids[:1]
    assert not redis_client.exists(KEYS.pause)
    assert redis_client.zcard(KEYS.waiting) == 3


def test_closing_the_engine_finishes_and_records_every_claimed_goal(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given a task whose claimed goals are still waiting for DataFast when it returns
    ids = enqueue(queue, 5)

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["idempotency-key"] != ids[0]:
            await asyncio.sleep(0.3)
        return ok()

    engine = engines(settings, answer)
    assert engine.run(*pop_message(redis_client)).summary == "delivered"
    assert redis_client.get(KEYS.delivered_count) == "1"
    # When the engine is closed (a warm shutdown)
    engine.close()
    # Then every claimed goal was delivered and recorded first
    assert redis_client.get(KEYS.delivered_count) == "5"
    assert redis_client.zcard(KEYS.ledger) == 0


def test_the_recorder_writes_every_record_once_in_groups() -> None:
    # Given a recorder whose writes take a while, so records pile up meanwhile
    groups: list[list[str]] = []

    async def write(record: Record) -> None:
        await asyncio.sleep(0.001)
        groups.append([str(arg) for arg in record.settlement.entries()])

    async def run() -> None:
        recorder = Recorder(write)
        records = []
        for i in range(500):
            record = Record()
            record.settlement.forget(f"entry-{i}", f"id-{i}")
            records.append(record)
        await asyncio.gather(*(recorder.record(record) for record in records))

    # When 500 records arrive at once
    asyncio.run(run())
    # Then each was written exactly once, most of them in groups
    written = [entry for group in groups for entry in group]
    assert sorted(written) == sorted(f"entry-{i}" for i in range(500))
    assert len(groups) < 10


def test_a_failed_write_fails_its_group_and_the_next_write_goes_on() -> None:
    # Given a recorder whose first write fails (Redis down past the retry window)
    failures = iter([True])
    written: list[str] = []

    async def write(record: Record) -> None:
        if next(failures, False):
            raise redis.ConnectionError("down")
        written.extend(str(arg) for arg in record.settlement.entries())

    async def run() -> None:
        recorder = Recorder(write)
        first, second = Record(), Record()
        first.settlement.forget("a", "id-a")
        second.settlement.forget("b", "id-b")
        with pytest.raises(redis.ConnectionError):
            await recorder.record(first)
        await recorder.record(second)

    asyncio.run(run())
    # Then the failed record is left to the reconciler, and the next one is written
    assert written == ["b"]


async def until(gate: threading.Event) -> None:
    """DataFast holding an answer back until the test opens ``gate``."""
    while not gate.is_set():
        await asyncio.sleep(0.005)


def test_a_claimed_message_with_a_sequence_never_handed_out_is_dead_lettered_and_moves_nothing(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    engines: Callable[..., Engine],
) -> None:
    # Given a goal handed to a task, and behind it a message whose sequence is beyond the last
    # one handed out (10^15, exact as a Lua number), then another goal
    first = queue.track_goal("v", "first")
    redis_client.lpush(KEYS.queue, template(KEYS) % (10**15, "future", 10**15))
    second = queue.track_goal("v", "second")
    api, claimed = FakeDataFast(), Claimed()
    engine = engines(settings, api, announce=claimed.append)
    # When the task delivers its goal, claiming the rest
    assert engine.run(*pop_message(redis_client)).event_id == first
    engine.wait()
    # Then the stray message is a poison dead letter keeping it, and the goals are delivered
    assert claimed.results() == {"future": "dead (poison)", second: "delivered"}
    (letter,) = [DeadLetter.from_json(raw) for raw in redis_client.hvals(KEYS.dead)]
    assert letter.reason == "poison" and '"id":"future"' in (letter.raw or "")
    assert redis_client.hget(KEYS.metrics, "dead:poison") == "1"
    # And `taken` stays the last sequence handed out
    assert redis_client.get(KEYS.taken) == redis_client.get(KEYS.seq) == "2"
