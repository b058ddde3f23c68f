"""A task's micro-batch: claimed goals, concurrent POSTs, outcomes recorded as answers arrive.

Real Redis, DataFast faked with httpx.MockTransport, a real thread pool.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from goalqueue import GoalQueue, keys
from goalqueue.config import Settings
from goalqueue.message import TEMPLATE
from tests.conftest import pop_message, wait_for
from tests.test_delivery import Clock, FakeDataFast, Handler, deliverer, error, ok
from workers.client import Answer
from workers.delivery import Deliverer, GroupCommit


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


def enqueue(queue: GoalQueue, n: int) -> list[str]:
    return [queue.track_goal("v", f"goal_{i}") for i in range(n)]


def worker(settings: Settings, api: Handler) -> Deliverer:
    return deliverer(settings, api, Clock(time.time()))


def test_a_batch_claims_queued_goals_and_delivers_each_once(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, pool: ThreadPoolExecutor
) -> None:
    # Given six queued goals, one of them handed to a task
    ids = enqueue(queue, 6)
    api = FakeDataFast()
    own = pop_message(redis_client)
    # When its batch claims up to ten more
    done = worker(settings, api).deliver_batch([own], claim=10, executor=pool)
    # Then the task's own goal comes first, and every goal is delivered once, in one batch
    assert [d.event_id for d in done] == ids
    assert {d.result for d in done} == {"delivered"}
    assert sorted(r.headers["idempotency-key"] for r in api.requests) == sorted(ids)
    assert redis_client.llen(keys.QUEUE) == 0
    assert redis_client.zcard(keys.LEDGER) == 0
    assert redis_client.get(keys.DELIVERED_COUNT) == "6"
    assert redis_client.get(keys.TAKEN) == redis_client.get(keys.SEQ)


def test_a_batch_leaves_messages_that_are_not_goals_for_kombu(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, pool: ThreadPoolExecutor
) -> None:
    # Given a queued goal behind a message that is not a goal message (kombu will bury it)
    goal = enqueue(queue, 2)
    own = pop_message(redis_client)
    redis_client.rpush(keys.QUEUE, "not a task message")
    # When a batch claims
    done = worker(settings, FakeDataFast()).deliver_batch([own], claim=4, executor=pool)
    # Then it delivered both goals and put the other message back at the consuming end
    assert [d.event_id for d in done] == goal
    assert redis_client.lrange(keys.QUEUE, 0, -1) == ["not a task message"]


def test_a_stale_copy_in_a_batch_is_dropped_and_the_live_one_delivered(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, pool: ThreadPoolExecutor
) -> None:
    # Given a goal queued twice (the first copy's sequence no longer owns the ledger entry)
    (event_id,) = enqueue(queue, 1)
    redis_client.lpush(keys.QUEUE, TEMPLATE % (0, event_id, 0))
    api = FakeDataFast()
    own = pop_message(redis_client)
    # When one batch holds both copies
    done = worker(settings, api).deliver_batch([own], claim=4, executor=pool)
    # Then DataFast saw the goal once
    assert sorted(d.result for d in done) == ["delivered", "stale copy"]
    assert len(api.requests) == 1


def test_a_batch_claims_a_message_in_the_first_builds_shape(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, pool: ThreadPoolExecutor
) -> None:
    # Given two queued goals, the second one's message rewritten as the first builds wrote it,
    # with (event_id, seq) as its arguments
    first, second = enqueue(queue, 2)
    own = pop_message(redis_client)
    redis_client.rpush(keys.QUEUE, first_builds_message(redis_client.rpop(keys.QUEUE)))
    # When a batch claims it
    done = worker(settings, FakeDataFast()).deliver_batch([own], claim=4, executor=pool)
    # Then both goals are delivered
    assert [(d.event_id, d.result) for d in done] == [(first, "delivered"), (second, "delivered")]


def first_builds_message(raw: str) -> str:
    message = json.loads(raw)
    (seq,) = json.loads(message["body"])[0]
    message["body"] = json.dumps([[message["headers"]["id"], seq], {}, {}])
    return json.dumps(message)


def test_answers_are_recorded_as_they_arrive_not_after_the_slowest_request(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, pool: ThreadPoolExecutor
) -> None:
    # Given a batch of two goals where DataFast holds the first answer back...
    slow, fast = enqueue(queue, 2)
    recorded = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["idempotency-key"] == slow:
            # ...until the other goal's delivery is on record in Redis
            wait_for(lambda: redis_client.exists(keys.delivered(fast)), timeout=5)
            recorded.set()
        return ok()

    own = pop_message(redis_client)
    done = worker(settings, answer).deliver_batch([own], claim=1, executor=pool)
    # Then the fast goal was recorded while the slow one was still in flight
    assert recorded.is_set()
    assert [d.result for d in done] == ["delivered", "delivered"]
    assert done[0].seconds >= done[1].seconds


def test_a_429_in_a_batch_pauses_delivery_and_parks_only_that_goal(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, pool: ThreadPoolExecutor
) -> None:
    # Given three goals, DataFast rate-limiting the second
    ids = enqueue(queue, 3)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["idempotency-key"] == ids[1]:
            return error(429, "slow down", **{"Retry-After": "30"})
        return ok()

    own = pop_message(redis_client)
    done = worker(settings, answer).deliver_batch([own], claim=2, executor=pool)
    # Then the others are delivered, the limited one waits, and delivery is paused
    assert [d.result for d in done] == ["delivered", "deferred (rate_limited)", "delivered"]
    assert redis_client.zrange(keys.WAITING, 0, -1) != []
    assert redis_client.hget(keys.PAUSE, "reason") == "rate_limited"


def test_a_batch_taken_while_paused_sends_one_probe_and_holds_the_rest(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, pool: ThreadPoolExecutor
) -> None:
    # Given a pause that has just ended, and four queued goals
    ids = enqueue(queue, 4)
    redis_client.hset(keys.PAUSE, mapping={"until": 0, "reason": "rate_limited", "streak": 1})
    api = FakeDataFast()
    own = pop_message(redis_client)
    # When one batch takes them all
    done = worker(settings, api).deliver_batch([own], claim=3, executor=pool)
    # Then exactly one goal tested the API; it succeeded, so the pause is over
    assert [d.result for d in done] == ["delivered"] + ["held while paused"] * 3
    assert [r.headers["idempotency-key"] for r in api.requests] == ids[:1]
    assert not redis_client.exists(keys.PAUSE)
    assert redis_client.zcard(keys.WAITING) == 3


def test_group_commit_records_every_answer_once_in_groups_from_many_threads() -> None:
    # Given a recorder that is slow, so answers pile up while it runs
    groups: list[list[int]] = []

    def record(group: list[tuple[int, Answer]]) -> None:
        time.sleep(0.001)
        groups.append([position for position, _ in group])

    answers = GroupCommit(record)
    # When 32 threads each bring 50 answers at once
    with ThreadPoolExecutor(32) as executor:
        list(executor.map(lambda i: answers.add(i, httpx.Response(200)), range(1600)))
    answers.finish()
    # Then every answer is recorded exactly once, one group at a time, most of them in groups
    recorded = [position for group in groups for position in group]
    assert sorted(recorded) == list(range(1600))
    assert len(groups) < 1600


def test_group_commit_keeps_answers_a_failed_recording_left_for_the_next() -> None:
    # Given a recorder that fails once (Redis down past the retry window)
    recorded: list[int] = []
    failures = iter([True])

    def record(group: list[tuple[int, Answer]]) -> None:
        if next(failures, False):
            raise redis.ConnectionError("down")
        recorded.extend(position for position, _ in group)

    answers = GroupCommit(record)
    # When the first answer's recording fails
    with pytest.raises(redis.ConnectionError):
        answers.add(0, httpx.Response(200))
    # Then the next answer's thread records both, and nothing is left for finish()
    answers.add(1, httpx.Response(200))
    answers.finish()
    assert recorded == [0, 1]
