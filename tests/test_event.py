"""``GoalEvent``: its compact stored form, the poison checks reading it back, its API body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goalqueue.event import GoalEvent

MINIMAL = GoalEvent(event_id="e1", visitor_id="v1", name="signup", enqueued_at=1_750_000_000.125)
FULL = GoalEvent(
    event_id="0b6c2f9e-3d1a-4c55-9a57-2f0e1c8d7b6a",
    visitor_id="a3ab2331-989f-4cfa-91c6-2461c9e3c6bd",
    name="checkout:completed",
    enqueued_at=1_750_000_000.5,
    metadata={"plan": "pro", "note": "café ☕"},
    description="First order, with spaces",
    attempts=3,
    first_attempt_at=1_750_000_001.0,
    last_attempt_at=1_750_000_042.25,
    last_status=503,
    last_error="Service Unavailable",
)
VALID_WIRE: dict[str, Any] = {"i": "e1", "v": "v1", "n": "signup", "t": 1.5}


def wire(**changes: Any) -> str:
    """The stored form of a minimal event with some keys changed (None removes a key)."""
    data = {**VALID_WIRE, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None})


# ------------------------------------------------------------------------------ stored form


@pytest.mark.parametrize("event", [MINIMAL, FULL], ids=["minimal", "full"])
def test_round_trip_through_the_stored_form(event: GoalEvent) -> None:
    assert GoalEvent.from_json(event.to_json()) == event
    assert GoalEvent.from_json(event.to_json().encode()) == event


def test_the_stored_form_is_compact_one_letter_keys_without_empty_fields() -> None:
    # Given a fresh event with no metadata, description or attempts yet
    # When it is written
    text = MINIMAL.to_json()
    # Then it is exactly the short form: no spaces, None fields left out
    assert text == '{"i":"e1","v":"v1","n":"signup","t":1750000000.125,"a":0}'


def test_the_stored_form_of_a_full_event() -> None:
    text = FULL.to_json()
    data = json.loads(text)
    assert set(data) == {"i", "v", "n", "t", "m", "d", "a", "f", "l", "s", "e"}
    assert data["m"] == {"plan": "pro", "note": "café ☕"}
    # Separators carry no spaces (spaces inside values are kept), non-ASCII is not escaped
    assert text == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    assert ": " not in text
    assert ", " not in text.replace("First order, with", "")
    assert "café ☕" in text


events = st.builds(
    GoalEvent,
    event_id=st.text(min_size=1, max_size=40),
    visitor_id=st.text(min_size=1, max_size=40),
    name=st.text(min_size=1, max_size=64),
    enqueued_at=st.floats(min_value=0, max_value=4e9),
    metadata=st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=10),
    description=st.none() | st.text(max_size=50),
    attempts=st.integers(min_value=0, max_value=10_000),
    first_attempt_at=st.none() | st.floats(min_value=0, max_value=4e9),
    last_attempt_at=st.none() | st.floats(min_value=0, max_value=4e9),
    last_status=st.none() | st.integers(min_value=100, max_value=599),
    last_error=st.none() | st.text(max_size=50),
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_any_event_survives_the_round_trip(event: GoalEvent) -> None:
    text = event.to_json()
    assert GoalEvent.from_json(text) == event
    assert all(value is not None for value in json.loads(text).values())


# ---------------------------------------------------------------------- unusable stored forms


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\xfe\xfd", id="invalid-utf8"),
        pytest.param(b"\xff\xfe\x00", id="truncated-utf16"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param("", id="empty-text"),
        pytest.param("not json", id="text"),
        pytest.param('{"i":"e1"', id="truncated"),
        pytest.param(b"\x80\x81garbage", id="binary"),
    ],
)
def test_garbage_is_a_value_error(raw: str | bytes) -> None:
    with pytest.raises(ValueError, match="undecodable"):
        GoalEvent.from_json(raw)


@pytest.mark.parametrize("raw", ["[]", '["e1","v1"]', '"event"', "1", "true", "null"])
def test_a_stored_form_that_is_not_an_object_is_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError, match="not an object"):
        GoalEvent.from_json(raw)


@pytest.mark.parametrize(
    "raw",
    [
        wire(x=1),
        wire(event_id="e1"),
        wire(I="e1"),
        wire(metadata={"a": "b"}),
    ],
)
def test_unknown_keys_are_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError, match="known fields"):
        GoalEvent.from_json(raw)


@pytest.mark.parametrize("missing", ["i", "v", "n", "t"])
def test_a_missing_required_field_is_a_value_error(missing: str) -> None:
    with pytest.raises(ValueError, match="lacks a field"):
        GoalEvent.from_json(wire(**{missing: None}))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"i": 1}, id="event-id-int"),
        pytest.param({"i": ""}, id="event-id-empty"),
        pytest.param({"v": ["v1"]}, id="visitor-list"),
        pytest.param({"v": ""}, id="visitor-empty"),
        pytest.param({"n": 5}, id="name-int"),
        pytest.param({"n": {"x": 1}}, id="name-object"),
        pytest.param({"t": "1.5"}, id="enqueued-at-string"),
        pytest.param({"t": [1.5]}, id="enqueued-at-list"),
        pytest.param({"a": "3"}, id="attempts-string"),
        pytest.param({"a": 1.5}, id="attempts-float"),
        pytest.param({"u": "1"}, id="unknown-attempts-string"),
        pytest.param({"u": 0.5}, id="unknown-attempts-float"),
        pytest.param({"m": ["plan", "pro"]}, id="metadata-list"),
        pytest.param({"m": "plan=pro"}, id="metadata-string"),
        pytest.param({"m": {"seats": 3}}, id="metadata-int-value"),
        pytest.param({"m": {"k": None}}, id="metadata-null-value"),
        pytest.param({"d": 5}, id="description-int"),
        pytest.param({"d": ["d"]}, id="description-list"),
    ],
)
def test_wrong_types_are_a_value_error(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GoalEvent.from_json(wire(**changes))


def test_null_required_values_are_a_value_error() -> None:
    raw = json.dumps({**VALID_WIRE, "n": None})
    with pytest.raises(ValueError):
        GoalEvent.from_json(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(wire(f="yesterday"), id="first-attempt-at-string"),
        pytest.param(wire(l=[1]), id="last-attempt-at-list"),
        pytest.param(wire(s="500"), id="last-status-string"),
        pytest.param(wire(e=42), id="last-error-int"),
        pytest.param(wire(t=None)[:-1] + ',"t":NaN}', id="enqueued-at-nan"),
    ],
)
def test_wrong_types_in_the_attempt_fields_are_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        GoalEvent.from_json(raw)


def test_deeply_nested_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        GoalEvent.from_json("[" * 100_000)


# ------------------------------------------------------------------------------------ attempts


def test_the_first_attempt_stamps_both_attempt_times() -> None:
    # Given a fresh event
    # When it is attempted once
    after = MINIMAL.attempted(100.0, 503, "Service Unavailable")
    # Then it counts one attempt, and the first and last attempt are that one
    assert after.attempts == 1
    assert after.first_attempt_at == 100.0
    assert after.last_attempt_at == 100.0
    assert after.last_status == 503
    assert after.last_error == "Service Unavailable"
    # ... and the original is untouched
    assert MINIMAL.attempts == 0
    assert MINIMAL.first_attempt_at is None


def test_later_attempts_keep_the_first_attempt_time() -> None:
    after = MINIMAL.attempted(100.0, 503, "busy").attempted(130.0, None, "ReadTimeout: x")
    after = after.attempted(190.0, 429, None)
    assert after.attempts == 3
    assert after.first_attempt_at == 100.0
    assert after.last_attempt_at == 190.0
    assert after.last_status == 429
    assert after.last_error is None


def test_unknown_attempts_are_counted_and_stored_only_once_there_are_some() -> None:
    # Given a goal attempted three times, two of them with an unknown outcome
    after = MINIMAL.attempted(1.0, None, "timeout_after_send: x", unknown=True)
    after = after.attempted(2.0, 503, "busy").attempted(3.0, 200, "html", unknown=True)
    # Then it counts them apart, and keeps the count through its stored form
    assert (after.attempts, after.unknown_attempts) == (3, 2)
    assert json.loads(after.to_json())["u"] == 2
    assert GoalEvent.from_json(after.to_json()) == after
    # And a goal without any stores no "u" at all
    assert "u" not in json.loads(MINIMAL.attempted(1.0, 503, "busy").to_json())


def test_attempted_keeps_the_goal_itself() -> None:
    after = FULL.attempted(2e9, 500, "oops")
    for name in ("event_id", "visitor_id", "name", "enqueued_at", "metadata", "description"):
        assert getattr(after, name) == getattr(FULL, name)
    assert after.attempts == FULL.attempts + 1
    assert after.first_attempt_at == FULL.first_attempt_at


# ------------------------------------------------------------------------------------ API body


@pytest.mark.parametrize(
    ("event", "body"),
    [
        pytest.param(MINIMAL, {"datafast_visitor_id": "v1", "name": "signup"}, id="minimal"),
        pytest.param(
            GoalEvent("e", "v", "signup", 1.0, metadata={}),
            {"datafast_visitor_id": "v", "name": "signup"},
            id="empty-metadata",
        ),
        pytest.param(
            GoalEvent("e", "v", "signup", 1.0, metadata={"plan": "pro"}),
            {"datafast_visitor_id": "v", "name": "signup", "metadata": {"plan": "pro"}},
            id="metadata",
        ),
        pytest.param(
            GoalEvent("e", "v", "signup", 1.0, description="hello"),
            {"datafast_visitor_id": "v", "name": "signup", "description": "hello"},
            id="description",
        ),
        pytest.param(
            FULL,
            {
                "datafast_visitor_id": FULL.visitor_id,
                "name": "checkout:completed",
                "metadata": {"plan": "pro", "note": "café ☕"},
                "description": "First order, with spaces",
            },
            id="full",
        ),
    ],
)
def test_api_body_is_what_datafast_expects(event: GoalEvent, body: dict[str, Any]) -> None:
    # Then the body holds only DataFast's fields: none of our bookkeeping, no empty metadata
    assert event.api_body() == body
