"""A worker node, ``goalqueue worker``: it supervises its Celery worker processes, whatever
their number, and stops them all on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from goalqueue.sandbox import Sandbox
from tests.helpers.markers import marker
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers


def accepted(sandbox: Sandbox, event_id: str) -> bool:
    return any(event.idempotency_key == event_id for event in sandbox.events(status=200))


def test_a_node_of_one_process_starts_it_again_when_it_is_killed(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers
) -> None:
    # Given `goalqueue worker --processes 1`, delivering
    node = workers.start_node(1)
    first = queue.track_goal("v1", "signup")
    wait_for(lambda: accepted(sandbox, first))

    # When its one Celery worker process is SIGKILLed
    def one_child() -> bool:
        """the node runs its Celery worker as a child process"""
        return len(node.children()) == 1

    wait_for(one_child, 5)
    (killed,) = node.children()
    os.kill(killed, signal.SIGKILL)

    # Then the node starts it again, and the new process delivers
    def restarted() -> bool:
        """a second Celery worker process is ready"""
        return node.output().count("ready.") == 2

    wait_for(restarted, 60)
    assert node.process.poll() is None, node.output()
    assert node.children() not in ([], [killed])
    second = queue.track_goal("v2", "signup")
    wait_for(lambda: accepted(sandbox, second))


def test_sigterm_at_the_capped_reconnect_back_off_stops_the_node_within_10_s_losing_nothing(
    private_redis: RedisServer, private_workers: Workers, settings: Settings, sandbox: Sandbox
) -> None:
    # Given a node whose reconnect back-off is capped at 1 s, and which would retry recording an
    # outcome for 30 s (half a 60 s visibility timeout), with goals in flight to a slow DataFast
    sandbox.set_faults(latency_ms=1000)
    env = {"GOALQUEUE_RECONNECT_MAX_SECONDS": "1", "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": "60"}
    node = private_workers.start_node(1, env=env)
    queue = GoalQueue(settings=replace(settings, broker_url=private_redis.url))
    ids = queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(300)])
    wait_for(lambda: sandbox.stats().in_flight > 0)

    # When Redis goes away until Celery's reconnect back-off has reached its cap
    private_redis.stop()

    def capped() -> bool:
        """the consumer retries at the capped back-off"""
        return node.output().count("Trying again in 1.00 second") >= 3

    wait_for(capped, 30)
    (child,) = node.children()
    # And the node gets SIGTERM
    node.process.send_signal(signal.SIGTERM)

    # Then the node and its worker process exit within 10 s
    try:
        node.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node did not exit within 10 s of SIGTERM:\n{node.output()[-3000:]}")
    assert not Path(f"/proc/{child}").exists()
    # And nothing is lost: each goal is recorded delivered, or still in the ledger or waiting
    private_redis.start()
    client = private_redis.client()
    kept = {
        GoalEvent.from_json(entry).event_id
        for key in (KEYS.ledger, KEYS.waiting)
        for entry in client.zrange(key, 0, -1)
    }
    assert {i for i in ids if i not in kept and marker(client, i) is None} == set()
