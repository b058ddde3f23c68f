"""The consumer watchdog: a worker process that has stopped taking goals it could take logs one
line, counts it and exits for its supervisor to start it again; one that is busy, paused by a
slow DataFast or cut off from Redis does not.

The real workers run as ``goalqueue worker --processes 1`` nodes (the supervisor that starts a
stopped process again) with a 3 s stall limit. The Redis scenarios' short form freezes Redis for
20 s; the long form (``slow``, with ``GOALQUEUE_CHAOS=long``) for 60 s.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.sandbox import Sandbox
from goalqueue.tally import CONSUMER_STALLS
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import WorkerProcess, Workers
from workers.app import create_app
from workers.watchdog import Judge, Stall

STALL_SECONDS = 3.0
STALLED = "consumer stalled: "
# Workers that judge a stall after 3 s, reconnect within 1 s, and wait up to 10 s for DataFast.
ENV = {
    "GOALQUEUE_CONSUMER_STALL_SECONDS": str(STALL_SECONDS),
    "GOALQUEUE_RECONNECT_MAX_SECONDS": "1",
    "GOALQUEUE_HTTP_TIMEOUT_SECONDS": "10",
    "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": "15",
}


# ------------------------------------------------------------------------------ the judgement


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def run(judge: Judge, clock: Clock, seconds: float, **check: object) -> list[Stall]:
    """Checks every ``judge.interval`` for ``seconds``; the stalls they found."""
    stalls = []
    for _ in range(round(seconds / judge.interval)):
        clock.now += judge.interval
        if (stall := judge.check(**check)) is not None:  # type: ignore[arg-type]
            stalls.append(stall)
    return stalls


def test_goals_queued_with_room_and_nothing_received_is_a_stall_once_it_lasts(
    clock: Clock,
) -> None:
    # Given a judge of 60 s stalls, checking every second
    judge = Judge(60, clock)
    assert judge.interval == 1.0
    # When 12 goals stay queued, the process has room and last received a message at start
    received = clock.now
    # Then it is a stall 60 s after the first check that found so, not before
    assert run(judge, clock, 60, queued=12, room=True, received=received) == []
    assert run(judge, clock, 1, queued=12, room=True, received=received) == [Stall(12, 60)]


@pytest.mark.parametrize(
    "interruption",
    [
        {"queued": None, "room": True},  # Redis did not answer (or an outage is under way)
        {"queued": 0, "room": True},  # the queue was empty for a moment
        {"queued": 12, "room": False},  # every task slot busy: a slow DataFast, the pace
    ],
    ids=["redis-unreachable", "queue-empty", "no-room"],
)
def test_any_check_that_could_not_take_starts_the_count_again(
    clock: Clock, interruption: dict[str, object]
) -> None:
    # Given a judge of 60 s stalls, and 50 s in which the process could have taken goals
    judge = Judge(60, clock)
    received = clock.now
    assert run(judge, clock, 50, queued=12, room=True, received=received) == []
    # When one check finds it could not
    assert judge.check(received=received, **interruption) is None  # type: ignore[arg-type]
    # Then the next stall is a full 60 s later, however long ago the last message was
    assert run(judge, clock, 60, queued=12, room=True, received=received) == []
    assert len(run(judge, clock, 1, queued=12, room=True, received=received)) == 1


def test_a_late_check_a_frozen_redis_or_a_suspended_process_starts_the_count_again(
    clock: Clock,
) -> None:
    # Given 50 s in which the process could have taken goals
    judge = Judge(60, clock)
    received = clock.now
    assert run(judge, clock, 50, queued=12, room=True, received=received) == []
    # When the next check comes 20 s late (its LLEN waited for a frozen Redis)
    clock.now += 20
    assert judge.check(12, True, received) is None
    # Then the count starts from the next one
    assert run(judge, clock, 60, queued=12, room=True, received=received) == []
    assert len(run(judge, clock, 1, queued=12, room=True, received=received)) == 1


def test_a_message_received_starts_the_count_again(clock: Clock) -> None:
    # Given a judge of 10 s stalls, and 9 s in which the process could have taken goals
    judge = Judge(10, clock)
    assert run(judge, clock, 9, queued=5, room=True, received=clock.now) == []
    # When a task message arrives
    received = clock.now
    # Then the next stall is 10 s after it
    assert run(judge, clock, 9, queued=5, room=True, received=received) == []
    assert run(judge, clock, 1, queued=5, room=True, received=received) == [Stall(5, 10)]


def test_a_short_limit_is_checked_ten_times_within_it() -> None:
    assert Judge(3).interval == pytest.approx(0.3)


# --------------------------------------------------------------------------- real workers


def accepted_keys(sandbox: Sandbox) -> set[str | None]:
    return {event.idempotency_key for event in sandbox.events(status=200)}


def stalls(client: redis.Redis) -> int:
    return int(client.hget(KEYS.metrics, CONSUMER_STALLS) or 0)


def test_a_worker_whose_consumer_is_cancelled_restarts_and_a_busy_one_does_not(
    queue: GoalQueue,
    settings: Settings,
    sandbox: Sandbox,
    workers: Workers,
    redis_client: redis.Redis,
) -> None:
    # Given a node of one worker process that claims 2 goals at most, delivering to a DataFast
    # that answers in 4 s: longer than the 3 s stall limit
    node = workers.start_node(1, env={**ENV, "GOALQUEUE_MAX_IN_FLIGHT": "2"})
    sandbox.set_faults(latency_ms=4000)
    busy = queue.track_goals([{"visitor_id": f"b{i}", "name": "signup"} for i in range(3)])
    # When the process is busy with its 2 goals for 4 s while a third stays queued
    wait_for(lambda: len(accepted_keys(sandbox)) >= 2, 20)
    # Then it did not take itself for stalled: it had no room for another message
    assert STALLED not in node.output()
    sandbox.set_faults(latency_ms=0)

    # When its consumer stops reading the queue (Celery's remote control), with goals queued
    app = create_app(settings)
    (reply,) = app.control.cancel_consumer(
        KEYS.queue, destination=[f"test01@{socket.gethostname()}"], reply=True
    )
    assert "ok" in next(iter(reply.values())), reply
    started = time.monotonic()
    ids = set(queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(20)]))

    # Then within the stall limit (and a check) it logs one line why and counts the stall
    wait_for(lambda: STALLED in node.output(), STALL_SECONDS + 5)
    noticed = time.monotonic() - started
    (line,) = [line for line in node.output().splitlines() if STALLED in line]
    assert "while 20 goals were queued" in line, line
    assert stalls(redis_client) == 1
    # And it exits with status 1; the node starts it again and it delivers every goal, once
    wait_for(lambda: "exited with 1; starting it again" in node.output(), 30)
    wait_for(lambda: ids | set(busy) <= accepted_keys(sandbox), 60)
    recovered = time.monotonic() - started
    assert sandbox.stats().duplicates == 0
    assert "still running" not in node.output()
    print(f"stall noticed after {noticed:.1f} s, all goals delivered {recovered:.1f} s after")


@pytest.fixture
def server(private_redis: RedisServer) -> Iterator[RedisServer]:
    yield private_redis
    if private_redis.process is not None and private_redis.process.poll() is None:
        private_redis.process.send_signal(signal.SIGCONT)  # so that the fixture can stop it


def consumes_again(
    queue: GoalQueue, sandbox: Sandbox, ids: set[str], label: str
) -> Callable[[], float]:
    """Enqueues a goal once Redis answers; returns how long until it was delivered."""

    def delivered() -> float:
        answered = time.monotonic()
        probe = queue.track_goal(label, "signup")
        ids.add(probe)
        wait_for(lambda: probe in accepted_keys(sandbox), 30)
        return time.monotonic() - answered

    return delivered


@pytest.mark.parametrize(
    "freeze_seconds",
    [
        pytest.param(20.0, id="short", marks=pytest.mark.timeout(120)),
        pytest.param(
            60.0,
            id="long",
            marks=[
                pytest.mark.timeout(240),
                pytest.mark.slow,
                pytest.mark.skipif(
                    os.environ.get("GOALQUEUE_CHAOS") != "long",
                    reason="the long freeze needs GOALQUEUE_CHAOS=long",
                ),
            ],
        ),
    ],
)
def test_a_worker_consumes_again_after_a_redis_freeze_killed_connections_and_a_restart(
    server: RedisServer,
    private_workers: Workers,
    settings: Settings,
    sandbox: Sandbox,
    freeze_seconds: float,
) -> None:
    # Given a node of one worker process, goals in flight to a DataFast that answers in 300 ms
    node: WorkerProcess = private_workers.start_node(1, env=ENV)
    queue = GoalQueue(settings=replace(settings, broker_url=server.url))
    client = server.client()
    sandbox.set_faults(latency_ms=300)
    ids: set[str] = set()
    took = {}

    def batch(label: str) -> None:
        ids.update(queue.track_goals([{"visitor_id": f"{label}{i}", "name": "signup"}
                                      for i in range(50)]))  # fmt: skip
        wait_for(lambda: sandbox.stats().in_flight > 0, 10, 0.01)

    # When Redis freezes (the freeze's length is the point: no polling)
    batch("freeze")
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    time.sleep(freeze_seconds)
    server.process.send_signal(signal.SIGCONT)
    # Then it consumes again within 30 s of Redis answering, without taking the freeze for a
    # stall of its consumer
    took["freeze"] = consumes_again(queue, sandbox, ids, "after-freeze")()
    assert STALLED not in node.output()

    # When every connection of the worker's is killed
    batch("kill")
    kinds = ("normal", "pubsub")
    killed = sum(client.client_kill_filter(_type=kind, skipme=True) for kind in kinds)
    assert killed >= 3
    took["kill"] = consumes_again(queue, sandbox, ids, "after-kill")()

    # When Redis restarts (its AOF keeps the queue)
    batch("restart")
    server.restart()
    client = server.client()
    took["restart"] = consumes_again(queue, sandbox, ids, "after-restart")()

    # Then nothing is lost, and none was sent twice
    wait_for(lambda: ids <= accepted_keys(sandbox), 60)
    wait_for(lambda: client.zcard(KEYS.ledger) == 0, 30)
    counts = sandbox.stats()
    print(f"consumed again after: {took}; duplicates {counts.duplicates}; "
          f"stalls {stalls(client)}")  # fmt: skip
    assert all(seconds < 30 for seconds in took.values()), took
    assert counts.duplicates == 0
    assert node.process.poll() is None, node.output()[-3000:]
