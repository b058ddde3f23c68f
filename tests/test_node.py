"""A worker node, ``goalqueue worker``: it supervises its Celery worker processes, whatever
their number, and stops them all on SIGTERM."""

from __future__ import annotations

import os
import signal

from goalqueue import GoalQueue
from goalqueue.sandbox import Sandbox
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
