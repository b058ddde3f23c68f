"""The producer against the real Redis: one goal, many goals, bad goals."""

from __future__ import annotations

import json

import pytest
import redis

import goalqueue
from goalqueue import GoalQueue, InvalidGoal
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from tests.helpers.settings import KEYS


def ledger(client: redis.Redis) -> list[tuple[GoalEvent, float]]:
    return [
        (GoalEvent.from_json(raw), seq)
        for raw, seq in client.zrange(KEYS.ledger, 0, -1, withscores=True)
    ]


def test_track_goal_writes_the_message_and_its_ledger_entry_together(
    queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # When a goal is tracked
    event_id = queue.track_goal("visitor-1", "Sign Up", metadata={"plan": "pro", "seats": 3})
    # Then the queue holds one Celery message for it, named by the task and the event id, whose
    # only argument is the sequence (the event id is there once, as the task id)
    (raw,) = redis_client.lrange(KEYS.queue, 0, -1)
    message = json.loads(raw)
    assert message["headers"] == {"id": event_id, "task": "goalqueue.deliver"}
    args, kwargs, _ = json.loads(message["body"])
    assert args == [1] and kwargs == {}
    assert raw.count(event_id) == 1
    # And the ledger holds the normalised goal under the same sequence
    ((event, seq),) = ledger(redis_client)
    assert seq == 1
    assert (event.event_id, event.visitor_id, event.name) == (event_id, "visitor-1", "sign_up")
    assert event.metadata == {"plan": "pro", "seats": "3"}


def test_track_goals_enqueues_many_in_order_with_distinct_ids(
    queue: GoalQueue, redis_client: redis.Redis
) -> None:
    goals = [{"visitor_id": f"v{i}", "name": "signup"} for i in range(1200)]
    ids = queue.track_goals(goals)
    assert len(set(ids)) == 1200
    assert redis_client.llen(KEYS.queue) == 1200
    entries = ledger(redis_client)
    assert [event.event_id for event, _ in entries] == ids
    assert [seq for _, seq in entries] == list(range(1, 1201))


def test_one_bad_goal_in_a_batch_enqueues_none_and_names_its_index(
    queue: GoalQueue, redis_client: redis.Redis
) -> None:
    goals = [
        {"visitor_id": "v1", "name": "signup"},
        {"visitor_id": "v2", "name": "identify"},
        {"visitor_id": "", "name": "ok", "colour": "red"},
    ]
    with pytest.raises(InvalidGoal) as caught:
        queue.track_goals(goals)
    assert set(caught.value.errors) == {"[1].name", "[2].colour"}
    assert redis_client.dbsize() == 0


def test_an_invalid_goal_touches_nothing(queue: GoalQueue, redis_client: redis.Redis) -> None:
    with pytest.raises(InvalidGoal) as caught:
        queue.track_goal("has space", "x" * 65, metadata={"k": ["list"]})
    assert set(caught.value.errors) == {"visitor_id", "name", "metadata"}
    assert isinstance(caught.value, ValueError)
    assert redis_client.dbsize() == 0


def test_module_level_track_goal_uses_the_environment(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", redis_url)
    goalqueue.config.get_settings.cache_clear()
    goalqueue.producer.set_default_queue(None)
    try:
        event_id = goalqueue.track_goal("visitor-1", "signup")
    finally:
        goalqueue.config.get_settings.cache_clear()
        goalqueue.producer.set_default_queue(None)
    assert [event.event_id for event, _ in ledger(redis_client)] == [event_id]


def test_an_explicit_broker_url_wins_over_settings(settings: Settings, redis_url: str) -> None:
    other = redis_url.rsplit("/", 1)[0] + "/14"
    assert GoalQueue(broker_url=other, settings=settings).settings.broker_url == other


def test_an_empty_script_cache_is_refilled_and_known_ids_stay_known(
    queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given a Redis whose script cache was emptied (a restart, a failover) after the first goal
    first = queue.track_goal("v", "signup")
    redis_client.script_flush()
    # When a new goal, then the first one again by its id, are tracked
    second = queue.track_goal("v", "signup")
    redis_client.script_flush()
    assert queue.track_goal("v", "signup", event_id=first) == first
    # Then each of the two is queued once
    assert sorted(event.event_id for event, _ in ledger(redis_client)) == sorted([first, second])
    assert redis_client.llen(KEYS.queue) == 2
