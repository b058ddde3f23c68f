"""A Redis outage in a worker's log: one line when it starts, a reminder at most every
``GOALQUEUE_OUTAGE_REMINDER_SECONDS`` with its length, one line when it ends.

The real worker's test stops its private Redis for a few seconds with reminders every 2 s; the
long form (``GOALQUEUE_OUTAGE=long``) stops it for 60 s with reminders every 20 s.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.sandbox import Sandbox
from tests.helpers.clock import Clock
from tests.helpers.redis_server import RedisServer
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers
from workers.outage import Outage

LONG = os.environ.get("GOALQUEUE_OUTAGE") == "long"
OUTAGE_SECONDS, REMINDER_SECONDS = (60.0, 20.0) if LONG else (5.0, 2.0)
REFUSED = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outage(clock: Clock, caplog: pytest.LogCaptureFixture) -> Outage:
    """A process's outage, reminding every 60 s, on ``clock``; its lines go to ``caplog``."""
    caplog.set_level(logging.WARNING, logger="workers.outage")
    return Outage(60, clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_an_outage_is_one_line_when_it_starts_a_reminder_per_interval_and_one_when_it_ends(
    outage: Outage, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a process's outage, reminding every 60 s
    # When its sweeper and its recorder fail 10 times a second for 150 s, then Redis answers
    for tenth in range(1500):
        clock.now = 1000 + tenth / 10
        outage.failed("sweep", REFUSED)
        outage.failed("recording outcomes", REFUSED)
    clock.now = 1150
    outage.succeeded()
    outage.succeeded()
    # Then the log has the start, a reminder a minute with the outage's length, and the end
    assert lines(caplog) == [
        f"Redis unreachable (sweep: {REFUSED}): retrying; a reminder every 60 s until it is back",
        f"Redis unreachable for 60 s (1201 failed attempts; the last, sweep: {REFUSED})",
        f"Redis unreachable for 120 s (2401 failed attempts; the last, sweep: {REFUSED})",
        "Redis reachable again after 150 s unreachable (3000 failed attempts)",
    ]


@pytest.mark.parametrize(
    ("end", "last_line"),
    [
        (Outage.succeeded, "Redis reachable again after 30 s unreachable"),
        (Outage.close, "Redis still unreachable at shutdown, after 30 s"),
    ],
    ids=["redis-back", "shutdown"],
)
def test_outcomes_given_up_during_an_outage_are_counted_in_its_last_line(
    outage: Outage,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    end: Callable[[Outage], None],
    last_line: str,
) -> None:
    # Given an outage under way
    outage.failed("recording outcomes", REFUSED)
    # When the recorder gives up on 256 goals' outcomes, and the outage ends or the process stops
    for _ in range(256):
        outage.unrecorded(REFUSED)
    clock.now += 30
    end(outage)
    # Then one line gives the outage's length and how many goals will be sent again
    assert lines(caplog)[1:] == [
        f"{last_line} (1 failed attempts; 256 goals' outcomes not recorded, to be sent again "
        "once the reconciler re-queues them)"
    ]


def test_an_outcome_given_up_outside_an_outage_has_a_line_of_its_own(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    outage.unrecorded(REFUSED)
    assert lines(caplog) == [
        f"a goal's outcome was not recorded (the reconciler re-queues it): {REFUSED}"
    ]


def test_a_worker_logs_a_redis_outage_once_with_bounded_reminders_and_once_when_it_ends(
    private_redis: RedisServer, private_workers: Workers, settings: Settings, sandbox: Sandbox
) -> None:
    # Given a worker sweeping every 0.1 s, reminding every REMINDER_SECONDS, with goals in
    # flight to a slow DataFast
    sandbox.set_faults(latency_ms=500)
    worker = private_workers.start(
        "-c", "2", env={"GOALQUEUE_OUTAGE_REMINDER_SECONDS": str(REMINDER_SECONDS)}
    )
    queue = GoalQueue(settings=replace(settings, broker_url=private_redis.url))
    queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(100)])
    wait_for(lambda: sandbox.stats().in_flight > 0)
    before = len(worker.output().splitlines())

    # When Redis is down for OUTAGE_SECONDS (the length of the outage is the point: no polling)
    private_redis.stop()
    time.sleep(OUTAGE_SECONDS)
    private_redis.start()
    # (and the worker delivers again)
    after = queue.track_goal("after", "signup")
    wait_for(lambda: after in {event.idempotency_key for event in sandbox.events(status=200)})

    # Then goalqueue's lines about it are one at the start, reminders with the outage's length
    # at most every REMINDER_SECONDS, and one at the end
    records = [line for line in worker.output().splitlines()[before:] if line.startswith("[")]
    ours = [line for line in records if "Redis" in line or "record" in line]
    starts = [line for line in ours if "Redis unreachable (" in line]
    reminders = [int(m[1]) for line in ours if (m := re.search(r"unreachable for (\d+) s", line))]
    ends = [line for line in ours if "Redis reachable again after" in line]
    assert (len(starts), len(ends)) == (1, 1), ours
    assert 1 <= len(reminders) <= OUTAGE_SECONDS / REMINDER_SECONDS + 1, ours
    assert reminders == sorted(reminders) and reminders[0] >= REMINDER_SECONDS, ours
    assert len(ours) == len(starts) + len(reminders) + len(ends), ours
