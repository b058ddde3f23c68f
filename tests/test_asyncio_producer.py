"""The asyncio producer on a real Redis: the same goals as the blocking one, a bounded wait that
never blocks the loop, the spool, and the per-loop process-wide queue."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis

import goalqueue
from goalqueue import AsyncGoalQueue, GoalQueue, InvalidGoal, MaybeEnqueued
from goalqueue.asyncio import set_default_async_queue
from goalqueue.config import Settings, get_settings
from goalqueue.event import GoalEvent
from tests.helpers.ports import dead_redis_url
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS
from tests.helpers.spool import spooled_rows
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 0.3
MARGIN = 0.2
VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def ledger(client: redis.Redis) -> list[GoalEvent]:
    return [GoalEvent.from_json(raw) for raw in client.zrange(KEYS.ledger, 0, -1)]  # type: ignore[union-attr]


async def with_ticks(work: Awaitable[object]) -> tuple[object, float, int]:
    """What ``work`` gave (or raised), how long it took, and how often a 10 ms ticker ran on
    the loop meanwhile: a blocked loop does not tick."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        outcome: object = await work
    except Exception as exc:
        outcome = exc
    elapsed = time.monotonic() - started
    ticker.cancel()
    return outcome, elapsed, ticks


def test_the_async_producer_enqueues_what_the_blocking_one_does(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def track() -> list[str]:
        async with AsyncGoalQueue(broker_url=redis_url) as queue:
            one = await queue.track_goal(VISITOR, "Sign Up", metadata={"seats": 3})
            redis_client.script_flush()  # as after a failover: scripts are loaded again
            many = await queue.track_goals([{"visitor_id": VISITOR, "name": "purchase"}] * 600)
            again = await queue.track_goal(VISITOR, "Sign Up", event_id=one)
            return [one, *many, again]

    ids = asyncio.run(track())
    # Then a goal per distinct id is queued, each as the blocking producer writes it
    assert ids[0] == ids[-1] and len(set(ids)) == 601
    assert redis_client.llen(KEYS.queue) == 601
    [first] = [event for event in ledger(redis_client) if event.event_id == ids[0]]
    assert (first.name, first.metadata) == ("sign_up", {"seats": "3"})


def test_a_bad_goal_raises_before_anything_is_sent(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def track() -> None:
        async with AsyncGoalQueue(broker_url=redis_url) as queue:
            await queue.track_goals([{"visitor_id": VISITOR, "name": "ok"}, {"name": "x"}])

    with pytest.raises(InvalidGoal, match=r"\[1\]\.visitor_id"):
        asyncio.run(track())
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("bulk", [1, 1200])
def test_a_frozen_redis_costs_at_most_the_timeout_and_never_blocks_the_loop(
    redis_server: Callable[..., RedisServer], bulk: int
) -> None:
    # Given a connected producer whose Redis then freezes (SIGSTOP)
    server = redis_server()
    settings = Settings(broker_url=server.url, enqueue_timeout_seconds=TIMEOUT)
    goals = [{"visitor_id": VISITOR, "name": "signup"}] * bulk

    async def track() -> tuple[object, float, int]:
        async with AsyncGoalQueue(settings=settings) as queue:
            await queue.track_goal(VISITOR, "warm-up")
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                return await with_ticks(queue.track_goals(goals))
            finally:
                os.kill(server.process.pid, signal.SIGCONT)

    outcome, elapsed, ticks = asyncio.run(track())
    # Then the call fails within the timeout: the command went out, so it may be enqueued
    assert isinstance(outcome, MaybeEnqueued), outcome
    assert len(outcome.unconfirmed) == bulk
    assert elapsed < TIMEOUT + MARGIN, f"{elapsed:.3f} s"
    # And the loop went on meanwhile
    assert ticks >= elapsed / 0.01 * 0.5, (ticks, elapsed)


def test_with_a_spool_a_dead_redis_spools_off_the_loop_and_re_sends_later(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    # Given an asyncio producer with a spool, and its Redis down
    server = redis_server()
    server.stop()
    spool = tmp_path / "spool"
    settings = Settings(
        broker_url=server.url, enqueue_timeout_seconds=TIMEOUT, spool_dir=str(spool)
    )

    async def track() -> tuple[list[str], float, int]:
        queue = AsyncGoalQueue(settings=settings)
        outcome, elapsed, ticks = await with_ticks(queue.track_goal(VISITOR, "signup"))
        later = await queue.track_goals([{"visitor_id": VISITOR, "name": "purchase"}] * 3)
        # And Redis comes back while the queue lives: its flusher re-sends the spool
        server.start()
        client = server.client()
        await asyncio.to_thread(wait_for, lambda: client.zcard(KEYS.ledger) == 4, 20)
        await queue.aclose()
        assert isinstance(outcome, str), outcome
        return [outcome, *later], elapsed, ticks

    ids, elapsed, ticks = asyncio.run(track())
    # Then the goals were kept without blocking the loop, and re-sent with their ids
    assert elapsed < TIMEOUT + MARGIN
    assert ticks >= int(elapsed / 0.01 * 0.5), (ticks, elapsed)
    assert sorted(event.event_id for event in ledger(server.client())) == sorted(ids)
    assert spooled_rows(spool) == []


def test_atrack_goal_uses_a_queue_per_event_loop_configured_by_the_environment(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", redis_url)
    get_settings.cache_clear()
    set_default_async_queue(None)
    try:
        first = asyncio.run(goalqueue.atrack_goal(VISITOR, "signup"))
        second = asyncio.run(goalqueue.atrack_goals([{"visitor_id": VISITOR, "name": "x"}]))
    finally:
        get_settings.cache_clear()
        set_default_async_queue(None)
    assert {event.event_id for event in ledger(redis_client)} == {first, *second}


def test_sixty_four_concurrent_tasks_each_get_their_goal_enqueued(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def track() -> list[str]:
        async with AsyncGoalQueue(broker_url=redis_url) as queue:
            return await asyncio.gather(
                *(queue.track_goal(f"v{i}", "signup") for i in range(64 * 4))
            )

    ids = asyncio.run(track())
    assert len(set(ids)) == 256 == redis_client.llen(KEYS.queue)
    # And the blocking producer sees the same ids as known
    GoalQueue(broker_url=redis_url).track_goal("v0", "signup", event_id=ids[0])
    assert redis_client.llen(KEYS.queue) == 256


def test_without_a_spool_each_concurrent_call_gets_its_own_error() -> None:
    # Given concurrent calls that go to Redis together, and a Redis that is not there
    async def track() -> list[BaseException | str]:
        async with AsyncGoalQueue(broker_url=dead_redis_url()) as queue:
            calls = [queue.track_goal(f"v{i}", "signup") for i in range(64)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(track())
    # Then each call fails promptly, naming its own goal only
    assert all(isinstance(outcome, goalqueue.NotEnqueued) for outcome in outcomes)
    ids = [outcome.event_ids for outcome in outcomes if isinstance(outcome, goalqueue.NotEnqueued)]
    assert all(len(one) == 1 for one in ids) and len({one[0] for one in ids}) == 64
    assert all("unreachable" in str(outcome) for outcome in outcomes)


def stubborn_queue(monkeypatch: pytest.MonkeyPatch, seconds: float) -> AsyncGoalQueue:
    """A queue whose sending ignores being cancelled for ``seconds``, then succeeds."""
    settings = Settings(broker_url=dead_redis_url(), enqueue_timeout_seconds=TIMEOUT)
    queue = AsyncGoalQueue(settings=settings)

    async def stubborn(*_: object) -> list[object]:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(left)
        return [1]

    monkeypatch.setattr(queue, "_send_once", stubborn)
    return queue


def test_a_round_whose_cancellation_is_swallowed_below_still_ends_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a producer whose sending ignores being cancelled for a second (Python 3.11's
    # asyncio.wait_for, in redis-py's connection pool, can swallow a cancellation: a round then
    # waited for a frozen Redis 1.6 s past its deadline under a web app's load)
    queue = stubborn_queue(monkeypatch, seconds=1.0)

    # When a goal is tracked
    async def track() -> tuple[object, float, int]:
        return await with_ticks(queue.track_goal(VISITOR, "signup"))

    outcome, elapsed, _ = asyncio.run(track())
    # Then the call fails by its deadline, not when the sending gives up
    assert isinstance(outcome, goalqueue.EnqueueError), outcome
    assert elapsed < TIMEOUT + MARGIN, f"{elapsed:.3f} s"


def test_aclose_waits_for_a_round_left_behind_by_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a producer whose sending ignores being cancelled until half an enqueue timeout
    # past the deadline
    queue = stubborn_queue(monkeypatch, seconds=TIMEOUT * 1.5)

    # When a goal's call fails by its deadline, and the queue is closed
    async def track_then_close() -> tuple[object, list[asyncio.Task[object]]]:
        outcome, _, _ = await with_ticks(queue.track_goal(VISITOR, "signup"))
        await queue.aclose()
        return outcome, [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    outcome, pending = asyncio.run(track_then_close())
    # Then closing waited for the round left behind: nothing of the queue's is still running
    assert isinstance(outcome, goalqueue.EnqueueError), outcome
    assert pending == []
