"""The framework-neutral web helpers: reading the visitor cookie, validating, enqueueing."""

from __future__ import annotations

import json
import logging
from typing import cast

import pytest
import redis

from goalqueue import EnqueueError, GoalQueue, InvalidGoal
from goalqueue.web import (
    VISITOR_COOKIE,
    goal_for_visitor,
    track_goal_for_visitor,
    visitor_id_from_cookies,
)
from tests.helpers.databases import WEB_REDIS_URL

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


@pytest.fixture
def ledger() -> redis.Redis:
    client = redis.Redis.from_url(WEB_REDIS_URL, decode_responses=True)
    client.flushdb()
    return client


@pytest.mark.parametrize(
    ("cookies", "expected"),
    [
        ({VISITOR_COOKIE: VISITOR}, VISITOR),
        ({VISITOR_COOKIE: f"  {VISITOR}\t"}, VISITOR),
        ({VISITOR_COOKIE: ""}, None),
        ({VISITOR_COOKIE: "   "}, None),
        ({}, None),
        ({"other": VISITOR}, None),
    ],
)
def test_visitor_id_from_cookies(cookies: dict[str, str], expected: str | None) -> None:
    assert visitor_id_from_cookies(cookies) == expected


def test_goal_for_visitor_normalises() -> None:
    fields = goal_for_visitor(VISITOR, "Sign Up", metadata={"plan": "pro", "seats": 3})
    assert fields == {
        "visitor_id": VISITOR,
        "name": "sign_up",
        "metadata": {"plan": "pro", "seats": "3"},
        "description": None,
    }


def test_no_visitor_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="goalqueue.web"):
        assert goal_for_visitor(None, "signup") is None
    assert "no datafast_visitor_id cookie" in caplog.text


def test_malformed_visitor_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="goalqueue.web"):
        assert goal_for_visitor("x" * 200, "signup") is None
    assert "malformed datafast_visitor_id cookie" in caplog.text


@pytest.mark.parametrize("visitor_id", [VISITOR, None, "x" * 200])
def test_bad_goal_raises_with_or_without_a_visitor(visitor_id: str | None) -> None:
    with pytest.raises(InvalidGoal) as raised:
        goal_for_visitor(visitor_id, "identify", metadata={"Bad Key": "v"})
    assert set(raised.value.errors) == {"name", "metadata"}


@pytest.mark.integration
def test_track_goal_for_visitor_enqueues(ledger: redis.Redis) -> None:
    queue = GoalQueue(broker_url=WEB_REDIS_URL)
    event_id = track_goal_for_visitor(VISITOR, "signup", metadata={"plan": "pro"}, queue=queue)
    [entry] = [json.loads(raw) for raw in cast(list[str], ledger.zrange("goalqueue:ledger", 0, -1))]
    assert entry["i"] == event_id
    assert (entry["n"], entry["v"], entry["m"]) == ("signup", VISITOR, {"plan": "pro"})


@pytest.mark.integration
def test_track_goal_for_visitor_without_visitor_enqueues_nothing(ledger: redis.Redis) -> None:
    queue = GoalQueue(broker_url=WEB_REDIS_URL)
    assert track_goal_for_visitor(None, "signup", queue=queue) is None
    assert ledger.zcard("goalqueue:ledger") == 0


@pytest.mark.integration
def test_track_goal_for_visitor_unreachable_redis() -> None:
    queue = GoalQueue(broker_url="redis://127.0.0.1:1/0")
    with pytest.raises(EnqueueError):
        track_goal_for_visitor(VISITOR, "signup", queue=queue)
