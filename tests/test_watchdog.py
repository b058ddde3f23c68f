"""The consumer watchdog: a worker process that has stopped taking goals it could take logs one
line, counts it and exits for its supervisor to start it again; one that is busy, paused by a
slow DataFast or cut off from Redis does not.

The real workers run as ``goalqueue worker --processes 1`` nodes (the supervisor that starts a
stopped process again) with a 3 s stall limit. The Redis scenarios' short form freezes Redis for
20 s; the long form (``slow``, with ``GOALQUEUE_CHAOS=long``) for 60 s.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import fakeredis
import pytest
import redis
from celery.worker import state as celery_state

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.markers import Markers
from goalqueue.sandbox import Sandbox
from goalqueue.tally import CONSUMER_STALLS
from tests.helpers.clock import Clock
from tests.helpers.forms import short_and_long
from tests.helpers.redis_server import RedisServer
from tests.helpers.scheduling import TIMED
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import WorkerProcess, Workers
from workers.app import create_app
from workers.outage import Outage
from workers.watchdog import EXIT_STALLED, EXIT_STUCK, Judge, Stall, Watchdog

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


# ------------------------------------------------------------------------ the watchdog thread


class Consumer:
    """Celery's consumer as the watchdog sees it: room, and no message received since start."""

    received = 0.0

    def has_room(self) -> bool:
        return True


def test_a_stall_is_one_line_a_count_and_a_warm_shutdown_then_if_need_be_a_hard_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a watchdog of 0.5 s stalls (a 2 s visibility timeout), started, whose consumer
    # receives nothing while 7 goals are queued
    caplog.set_level(logging.INFO, logger="workers.watchdog")
    settings = Settings(
        consumer_stall_seconds=0.5,
        reconnect_max_seconds=0.1,
        http_timeout_seconds=0.5,
        visibility_timeout_seconds=2.0,
    )
    client = fakeredis.FakeRedis(decode_responses=True)
    client.rpush(KEYS.queue, *range(7))
    shut_down: list[str] = []
    exits: list[int] = []
    watchdog = Watchdog(settings, client, Outage(60), exit=exits.append)
    watchdog.start(Consumer(), lambda: shut_down.append("claim nothing more"))
    try:
        # When the stall limit has passed
        wait_for(lambda: shut_down, 5)
        # Then it logged one line, counted the stall, stopped claiming and asked Celery for a
        # warm shutdown with status 1
        (line,) = [record.getMessage() for record in caplog.records]
        assert re.fullmatch(
            r"consumer stalled: no task message in 0\.[5-9] s while 7 goals were queued, Redis "
            r"answered and this process had room \(GOALQUEUE_CONSUMER_STALL_SECONDS=0\.5\): "
            r"shutting down with status 1 once the goals in flight are recorded, for its "
            r"supervisor to start it again",
            line,
        ), line
        assert client.hget(KEYS.metrics, CONSUMER_STALLS) == "1"
        assert celery_state.should_stop == EXIT_STALLED
        # And when the process still runs the visibility timeout later, it exits at once, with
        # status 70 and a second line
        wait_for(lambda: exits, 5)
        assert exits == [EXIT_STUCK]
        assert (
            caplog.records[-1]
            .getMessage()
            .startswith(
                "still running 2 s after its consumer stalled: exiting at once with status 70"
            )
        )
    finally:
        watchdog.stop()
        celery_state.should_stop = None


# --------------------------------------------------------------------------- a real worker


def accepted_keys(sandbox: Sandbox) -> set[str | None]:
    return {event.idempotency_key for event in sandbox.events(status=200)}


def stalls(client: redis.Redis) -> int:
    return int(client.hget(KEYS.metrics, CONSUMER_STALLS) or 0)


@pytest.fixture
def server(private_redis: RedisServer) -> Iterator[RedisServer]:
    yield private_redis
    if private_redis.process is not None and private_redis.process.poll() is None:
        private_redis.process.send_signal(signal.SIGCONT)  # so that the fixture can stop it


@dataclass
class Session:
    """One node of one worker process, the goals enqueued for it, and what the test saw."""

    node: WorkerProcess
    queue: GoalQueue
    sandbox: Sandbox
    ids: set[str] = field(default_factory=set)
    figures: dict[str, float] = field(default_factory=dict)

    def enqueue(self, label: str, count: int) -> list[str]:
        goals = [{"visitor_id": f"{label}{i}", "name": "signup"} for i in range(count)]
        ids = self.queue.track_goals(goals)
        self.ids.update(ids)
        return ids

    def consumes_again(self, label: str) -> None:
        """Redis answers: a goal is delivered within 30 s, and one enqueued now too."""
        answered, before = time.monotonic(), self.sandbox.stats().accepted
        (probe,) = self.enqueue(label, 1)
        wait_for(lambda: self.sandbox.stats().accepted > before, 30)
        self.figures[label] = round(time.monotonic() - answered, 1)
        wait_for(lambda: probe in accepted_keys(self.sandbox), 30)


def node_log_has_one_stall(node: WorkerProcess) -> bool:
    return node.output().count(STALLED) == 1


def a_cancelled_consumer_is_a_stall_once_it_has_room(
    session: Session, settings: Settings, client: redis.Redis
) -> None:
    """Its consumer stops reading the queue (Celery's remote control) while both task threads
    wait for DataFast, and goals are queued: no stall while they wait (no room for another
    message), a stall 3 s after one is free, and then a fresh process."""
    sandbox, node = session.sandbox, session.node
    # Both task threads busy for 5 s or more (longer than the 3 s stall limit): one sends its
    # goal, the other waits for the one connection (GOALQUEUE_MAX_IN_FLIGHT=1)
    sandbox.set_faults(latency_ms=5000)
    held = set(session.enqueue("busy", 3)[:2])

    def both_busy() -> bool:
        """one goal is sent, and both task threads hold one"""
        log = node.output()
        return sandbox.stats().in_flight == 1 and all(f"[{i}] received" in log for i in held)

    wait_for(both_busy, 10)
    (reply,) = create_app(settings).control.cancel_consumer(
        KEYS.queue, destination=[f"test01@{socket.gethostname()}"], reply=True
    )
    assert "ok" in next(iter(reply.values())), reply
    session.enqueue("queued", 20)
    # While both wait, goals queued and no message received is no stall
    wait_for(lambda: held & accepted_keys(sandbox), 10)
    room = time.monotonic()
    assert STALLED not in node.output()
    (second,) = held - accepted_keys(sandbox)
    # Once a task thread is free, within the stall limit (and a check) one line says why and
    # the stall is counted, with the second goal in flight
    wait_for(lambda: STALLED in node.output(), STALL_SECONDS + 2)
    stalled = time.monotonic()
    session.figures["stall-noticed"] = round(stalled - room, 1)
    assert sandbox.stats().in_flight == 1
    (line,) = [line for line in node.output().splitlines() if STALLED in line]
    assert "while 21 goals were queued" in line, line
    assert stalls(client) == 1
    # The process exits with status 1 once that goal is delivered and recorded
    wait_for(lambda: "exited with 1; starting it again" in node.output(), 30)
    session.figures["exited-after-stall"] = round(time.monotonic() - stalled, 1)
    assert Markers(client, KEYS).get(second) is not None
    # And the node starts it again, and it delivers the queued goals
    sandbox.set_faults(latency_ms=0)
    wait_for(lambda: session.ids <= accepted_keys(sandbox), 30)
    session.figures["delivered-after-stall"] = round(time.monotonic() - stalled, 1)
    assert "still running" not in node.output()


@TIMED
@pytest.mark.parametrize("freeze_seconds", short_and_long(20.0, 60.0, 120, 240))
def test_a_stalled_worker_restarts_and_one_busy_or_cut_off_from_redis_does_not(
    server: RedisServer,
    private_workers: Workers,
    settings: Settings,
    sandbox: Sandbox,
    freeze_seconds: float,
) -> None:
    # Given a node of one worker process with two task threads, each sending its own goal
    # and claiming none
    env = {**ENV, "GOALQUEUE_MAX_IN_FLIGHT": "1"}
    settings = replace(settings, broker_url=server.url)
    session = Session(
        private_workers.start_node(1, "-c", "2", env=env), GoalQueue(settings=settings), sandbox
    )
    client = server.client()
    # When Redis restarts (its AOF keeps the queue) with goals in flight to a DataFast that
    # answers in 100 ms, and then when every connection the worker has is killed, it consumes
    # again within 30 s of Redis answering
    sandbox.set_faults(latency_ms=100)
    session.enqueue("restart", 10)
    server.restart()
    client = server.client()
    session.consumes_again("after-restart")
    session.enqueue("kill", 10)
    kinds = ("normal", "pubsub")
    assert sum(client.client_kill_filter(_type=kind, skipme=True) for kind in kinds) >= 3
    session.consumes_again("after-kill")
    # When its consumer is cancelled, it is stalled once it has room to take goals
    a_cancelled_consumer_is_a_stall_once_it_has_room(session, settings, client)

    # When Redis freezes with goals in flight (the freeze's length is the point: no polling)
    sandbox.set_faults(latency_ms=100)
    session.enqueue("freeze", 10)
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    time.sleep(freeze_seconds)
    server.process.send_signal(signal.SIGCONT)
    # Then it consumes again within 30 s of Redis answering, without taking the freeze for a
    # stall of its consumer
    session.consumes_again("after-freeze")

    # And nothing is lost, and only the cancel was a stall
    wait_for(lambda: session.ids <= accepted_keys(sandbox), 60)
    wait_for(lambda: client.zcard(KEYS.ledger) == 0, 30)
    duplicates = sandbox.stats().duplicates
    print(f"seconds: {session.figures}; duplicates: {duplicates}")
    # (at most one per task thread per lost connection: kombu puts back the message of a task
    # still running when its channel closes, and the copy may be sent before the first is
    # recorded)
    assert duplicates <= 2 * 2
    assert node_log_has_one_stall(session.node)
    assert stalls(client) == 1
    assert session.node.process.poll() is None, session.node.output()[-3000:]
