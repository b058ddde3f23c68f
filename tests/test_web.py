"""The framework-neutral web helpers: reading the visitor cookie, validating, enqueueing."""

from __future__ import annotations

import logging

import pytest

from goalqueue import InvalidGoal
from goalqueue.web import VISITOR_COOKIE, event_for_visitor, visitor_id_from_cookies

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
EVENT_ID = "9b6b8a4e-3f0e-4c52-9d55-6f0c1f2a7b10"


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


def test_event_for_visitor_normalises() -> None:
    event = event_for_visitor(VISITOR, "Sign Up", metadata={"plan": "pro", "seats": 3})
    assert event is not None
    assert (event.visitor_id, event.name, event.metadata, event.description) == (
        VISITOR,
        "sign_up",
        {"plan": "pro", "seats": "3"},
        None,
    )


def test_no_visitor_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="goalqueue.web"):
        assert event_for_visitor(None, "signup") is None
    assert "no datafast_visitor_id cookie" in caplog.text


def test_malformed_visitor_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="goalqueue.web"):
        assert event_for_visitor("x" * 200, "signup") is None
    assert "malformed datafast_visitor_id cookie" in caplog.text


@pytest.mark.parametrize("visitor_id", [VISITOR, None, "x" * 200])
def test_bad_goal_raises_with_or_without_a_visitor(visitor_id: str | None) -> None:
    with pytest.raises(InvalidGoal) as raised:
        event_for_visitor(visitor_id, "identify", metadata={"Bad Key": "v"})
    assert set(raised.value.errors) == {"name", "metadata"}


def test_a_callers_event_id_is_kept_in_canonical_form() -> None:
    event = event_for_visitor(VISITOR, "signup", event_id=EVENT_ID.upper())
    assert event is not None and event.event_id == EVENT_ID


def test_an_event_id_that_is_not_a_uuid_is_a_bad_goal() -> None:
    with pytest.raises(InvalidGoal) as raised:
        event_for_visitor(VISITOR, "signup", event_id="order-42")
    assert set(raised.value.errors) == {"event_id"}
