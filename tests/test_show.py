"""``goalqueue show``: a goal's whereabouts and attempts, against a real worker and the sandbox."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from goalqueue import GoalQueue
from goalqueue.cli import main
from goalqueue.config import get_settings
from goalqueue.sandbox import Sandbox
from tests.helpers.deadletters import kill
from tests.helpers.markers import marker
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers

pytestmark = pytest.mark.integration


@pytest.fixture
def show(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", redis_url)
    get_settings.cache_clear()

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["show", *args], catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


def deliver_and_refuse(
    queue: GoalQueue, sandbox: Sandbox, client: redis.Redis, visitors: tuple[str, str]
) -> tuple[str, str]:
    """A goal of the first visitor delivered, then one of the second refused with a 400."""
    delivered = queue.track_goal(visitors[0], "signup")
    wait_for(lambda: marker(client, delivered), 20)
    sandbox.fail_next(400)
    refused = queue.track_goal(visitors[1], "upgrade")
    wait_for(lambda: client.hexists(KEYS.dead, refused), 20)
    return delivered, refused


def shown(show: Any, event_id: str) -> dict[str, Any]:
    result = show(event_id, "--json")
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.output)
    return found


def test_show_follows_goals_delivered_retried_and_dead_through_a_real_worker(
    show: Any, queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    workers.start()
    # Given a goal delivered at its first attempt, and one that DataFast refused with a 400
    first, refused = deliver_and_refuse(queue, sandbox, redis_client, ("v1", "v3"))
    # And one that got a 503, then a 200
    sandbox.fail_next(503)
    retried = queue.track_goal("v2", "signup")
    wait_for(lambda: marker(redis_client, retried), 20)

    # Then the first is delivered, with DataFast's event id, and keeps no attempt log
    delivered = shown(show, first)
    accepted = {e.idempotency_key: e for e in sandbox.events(status=200)}
    assert delivered["state"] == "delivered"
    assert delivered["remote_id"] and delivered["at"] == pytest.approx(time.time(), abs=30)
    assert delivered["attempts"] == []
    assert not redis_client.exists(KEYS.attempts(first))
    assert set(delivered) == {
        "event_id", "state", "at", "until", "why", "worker", "remote_id", "seq", "visitor_id",
        "name", "enqueued_at", "attempts",
    }  # fmt: skip
    assert first in accepted
    # And the retried one lists both attempts, with their status and decision
    again = shown(show, retried)
    assert again["state"] == "delivered"
    attempts = again["attempts"]
    assert [(a["status"], a["decision"]) for a in attempts] == [(503, "wait"), (200, "delivered")]
    assert attempts[0]["why"] == "server_error" and attempts[0]["until"] >= attempts[0]["at"]
    assert all(a["worker"] and a["seconds"] is not None for a in attempts)
    # And the refused one is dead, for its reason, after one attempt
    dead = shown(show, refused)
    assert (dead["state"], dead["why"], dead["visitor_id"]) == ("dead", "bad_request", "v3")
    assert [(a["status"], a["decision"], a["why"]) for a in dead["attempts"]] == [
        (400, "dead", "bad_request")
    ]
    # And the human form is a short aligned table
    human = show(retried)
    assert human.exit_code == 0
    assert "state  delivered" in human.output
    assert "server_error" in human.output and "503" in human.output


def test_show_says_until_when_and_why_a_goal_waits(
    show: Any, queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a worker whose retries wait a minute, and a goal that got a 503
    workers.start(env={"GOALQUEUE_RETRY_BASE_SECONDS": "60", "GOALQUEUE_RETRY_MAX_SECONDS": "60"})
    sandbox.fail_next(503)
    event_id = queue.track_goal("v", "signup")
    wait_for(lambda: redis_client.zcard(KEYS.waiting) == 1, 20)
    # Then show says it waits, until when, and why
    waiting = shown(show, event_id)
    assert waiting["state"] == "waiting"
    assert waiting["until"] > time.time()
    assert waiting["why"] == "wait: server_error"
    assert [a["status"] for a in waiting["attempts"]] == [503]
    assert "until" in show(event_id).output


def test_show_a_queued_goal_an_unknown_one_and_a_malformed_id(
    show: Any, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given a goal enqueued with no worker running
    event_id = queue.track_goal("v", "signup")
    queued = shown(show, event_id.upper())
    assert (queued["state"], queued["seq"], queued["visitor_id"]) == ("queued", 1, "v")
    # A goal no one enqueued: one line, exit 1
    unknown = show(str(uuid.uuid4()))
    assert unknown.exit_code == 1
    assert len(unknown.output.strip().splitlines()) == 1 and "unknown" in unknown.output
    assert json.loads(show(str(uuid.uuid4()), "--json").output)["state"] == "unknown"
    # Not an event id at all: a usage error
    assert show("not-an-id").exit_code == 2


def test_show_finds_a_dead_letter_made_without_a_worker(
    show: Any, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    event_id = kill(redis_client, queue, "v", status=404, reason="unknown_visitor")
    assert shown(show, event_id)["state"] == "dead"


def test_show_visitor_lists_the_visitors_recent_goals_and_where_each_is(
    show: Any, queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a visitor with a goal delivered, one refused, and another visitor's goal
    workers.start()
    delivered, refused = deliver_and_refuse(queue, sandbox, redis_client, ("alice", "alice"))
    queue.track_goal("bob", "signup")
    # Then --visitor lists alice's goals, newest first, each with its state
    result = show("--visitor", "alice", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["visitor_id"] == "alice"
    goals = [(g["event_id"], g["state"]) for g in listed["goals"]]
    assert goals == [(refused, "dead"), (delivered, "delivered")]
    assert all(g["enqueued_at"] == pytest.approx(time.time(), abs=60) for g in listed["goals"])
    human = show("--visitor", "alice").output
    assert refused in human and "dead" in human and "delivered" in human
    assert "no goals" in show("--visitor", "carol").output
    assert show().exit_code == 2
