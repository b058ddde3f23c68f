"""Property tests of the producer's validation against an independent reading of DataFast's rules.

The checker below is written from DataFast's API notes (docs/datafast-goals-api.md), not from
``goalqueue.schema``: whatever ``validate_goal`` returns must pass it, and whatever it cannot
return must be refused with ``InvalidGoal``, never with any other exception. A second set of
properties runs the whole producer on fakeredis (with Lua): a refused goal writes nothing, an
accepted goal writes exactly one queue message and one ledger entry.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from goalqueue import GoalQueue, InvalidGoal
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from goalqueue.goals import new_id
from goalqueue.schema import GoalSchema, validate_goal
from tests.helpers.settings import KEYS

# ------------------------------------------------------------------ DataFast's rules, re-derived

# From the API notes: names are a-z 0-9 _ - : and at most 64 long; "identify" is reserved;
# metadata has at most 10 keys matching ^[a-z0-9_-]+$ (at most 64 long) with string values of at
# most 255 characters; the visitor id is the cookie value. goalqueue's own documented limits
# (visitor id <= 128, description <= 1024) are checked too.
DATAFAST_NAME = re.compile(r"[a-z0-9_:-]+")
DATAFAST_KEY = re.compile(r"[a-z0-9_-]+")


def is_control_or_space(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) == "Cc"


def datafast_problems(goal: Mapping[str, Any]) -> list[str]:
    """Every way ``goal`` (validate_goal's output) breaks DataFast's documented rules."""
    problems: list[str] = []
    if set(goal) != {"visitor_id", "name", "metadata", "description"}:
        problems.append(f"unexpected fields {sorted(goal)}")
    visitor = goal.get("visitor_id")
    if not isinstance(visitor, str) or not 1 <= len(visitor) <= 128:
        problems.append("visitor id must be a non-empty string of at most 128 characters")
    elif any(is_control_or_space(c) for c in visitor):
        problems.append("visitor id has whitespace or control characters")
    name = goal.get("name")
    if not isinstance(name, str) or not DATAFAST_NAME.fullmatch(name) or len(name) > 64:
        problems.append(f"bad name {name!r}")
    elif name == "identify":
        problems.append("reserved name")
    metadata = goal.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or not metadata or len(metadata) > 10:
            problems.append("metadata must be a non-empty object of at most 10 keys")
        else:
            for key, value in metadata.items():
                if not isinstance(key, str) or not DATAFAST_KEY.fullmatch(key) or len(key) > 64:
                    problems.append(f"bad metadata key {key!r}")
                if not isinstance(value, str) or len(value) > 255:
                    problems.append(f"bad metadata value {value!r}")
    description = goal.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 1024):
        problems.append("bad description")
    return problems


def stored_value(value: object) -> str | None:
    """How a metadata value must be stored: the string itself, or a number/bool as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None


# -------------------------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=300),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
not_strings = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.text(), max_size=2)
)

good_visitor_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=128,
).filter(lambda v: not any(is_control_or_space(c) for c in v))
good_names = st.from_regex(r"[A-Za-z0-9_: -]{1,64}", fullmatch=True).filter(
    lambda n: n.lower().replace(" ", "_") != "identify"
)
good_keys = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
good_values = st.one_of(
    st.text(max_size=255),
    st.integers(min_value=-(10**200), max_value=10**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
good_metadata = st.one_of(st.none(), st.dictionaries(good_keys, good_values, max_size=10))
good_descriptions = st.one_of(st.none(), st.text(max_size=1024))

# Values on or just past each documented limit: random text rarely lands exactly on one.
edge_visitor_ids = st.sampled_from(
    [
        "",
        " ",
        "a b",
        "a\tb",
        "a\x00b",
        "a\x7f",
        "a\x85b",
        "a\u00a0b",
        "a\u2028b",
        "x" * 128,
        "x" * 129,
    ]
)
edge_names = st.sampled_from(
    [
        "identify",
        "Identify",
        "IDENTIFY",
        " identify",
        "a" * 64,
        "a" * 65,
        "A" * 64,
        "A b" * 22,
        "sign.up",
        "signup\n",
        "",
        " ",
        "x:y-z_0",
    ]
)
edge_metadata = st.sampled_from(
    [
        {f"k{i}": "v" for i in range(10)},
        {f"k{i}": "v" for i in range(11)},
        {"k" * 64: "v"},
        {"k" * 65: "v"},
        {"Key": "v"},
        {"a:b": "v"},
        {"k\n": "v"},
        {"k": "x" * 255},
        {"k": "x" * 256},
        {"k": 10**254},
        {"k": 10**255},
        {"k": math.nan},
        {"k": -math.inf},
        {"k": None},
        {"k": {"nested": "v"}},
        {"k": ["v"]},
        {},
    ]
)
edge_descriptions = st.sampled_from(["", "d" * 1024, "d" * 1025])

any_visitor_ids = st.one_of(
    edge_visitor_ids,
    st.text(max_size=140),
    st.text(min_size=120, max_size=140),
    st.binary(max_size=20),
    not_strings,
)
any_names = st.one_of(
    edge_names,
    st.from_regex(r"[A-Za-z0-9_: .\t-]{0,70}", fullmatch=True),
    st.text(max_size=70),
    st.binary(max_size=20),
    not_strings,
)
any_keys = st.one_of(good_keys, st.text(max_size=70), st.integers(), st.none())
any_metadata = st.one_of(
    edge_metadata,
    st.dictionaries(any_keys, st.one_of(good_values, json_values), max_size=12),
    st.dictionaries(good_keys, good_values, min_size=9, max_size=12),
    json_values,
)
any_descriptions = st.one_of(edge_descriptions, st.binary(max_size=10), json_values)

GOOD = {
    "visitor_id": good_visitor_ids,
    "name": good_names,
    "metadata": good_metadata,
    "description": good_descriptions,
}
EDGE = {
    "visitor_id": edge_visitor_ids,
    "name": edge_names,
    "metadata": edge_metadata,
    "description": edge_descriptions,
}
ANY = {
    "visitor_id": any_visitor_ids,
    "name": any_names,
    "metadata": any_metadata,
    "description": any_descriptions,
}


def pick(*choices: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each equally likely (``st.one_of`` flattens nested unions instead)."""
    return st.sampled_from(choices).flatmap(lambda chosen: chosen)


FIELDS = sorted(GOOD)
good_goals = st.fixed_dictionaries(GOOD)


@st.composite
def any_goals(draw: st.DrawFn, focus: str | None = None) -> dict[str, Any]:
    """A goal with one field (``focus``, or one drawn) on a limit or arbitrary.

    With a ``focus`` the other fields are always good, so a refusal must name that field alone;
    without one they are mostly good. A bad field among good ones is what catches a shifted
    limit: when every field is bad, the goal is refused whatever any single rule says.
    """
    chosen = focus or draw(st.sampled_from(FIELDS))
    goal = {}
    for field in FIELDS:
        if field == chosen:
            goal[field] = draw(pick(EDGE[field], ANY[field]))
        elif focus:
            goal[field] = draw(GOOD[field])
        else:
            goal[field] = draw(pick(GOOD[field], GOOD[field], GOOD[field], ANY[field]))
    return goal


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------- validate_goal alone


@pytest.mark.parametrize("focus", [None, *FIELDS])
@SETTINGS
@given(data=st.data())
def test_validate_goal_returns_what_datafast_accepts_or_raises_invalid_goal(
    focus: str | None, data: st.DataObject
) -> None:
    # Given arbitrary inputs of any type (only in ``focus`` when one is set)
    strategy = any_goals(focus) if focus else pick(good_goals, any_goals())
    goal = data.draw(strategy, label="goal")
    # When they are validated
    try:
        result = validate_goal(**goal)
    except InvalidGoal as exc:
        event("refused")
        # Then a refusal names the bad fields (only the focused one), each with a reason
        assert exc.errors
        assert set(exc.errors) <= set(FIELDS)
        if focus:
            assert set(exc.errors) == {focus}
        assert all(
            reasons and all(isinstance(r, str) for r in reasons) for reasons in exc.errors.values()
        )
        return
    event("accepted")
    # Then an acceptance is something DataFast's rules accept
    assert datafast_problems(result) == []
    # ... and the name is the input as DataFast stores it
    if isinstance(goal["name"], str):
        assert result["name"] == goal["name"].lower().replace(" ", "_")
    if isinstance(goal["visitor_id"], str):
        assert result["visitor_id"] == goal["visitor_id"]


def test_new_ids_are_random_uuids_in_canonical_form() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        made = uuid.UUID(text)
        assert (made.version, made.variant, str(made)) == (4, uuid.RFC_4122, text)


@SETTINGS
@given(pick(good_goals, any_goals()))
def test_validate_goal_answers_as_the_marshmallow_schema_loads(goal: dict[str, Any]) -> None:
    # Given any goal, validate_goal (the schema's fields one by one) and GoalSchema().load agree
    try:
        loaded: Any = GoalSchema().load(goal)
    except ValidationError as exc:
        with pytest.raises(InvalidGoal) as raised:
            validate_goal(**goal)
        messages: Any = exc.normalized_messages()  # type: ignore[no-untyped-call]
        assert raised.value.errors == {
            field: [str(why) for why in reasons] for field, reasons in messages.items()
        }
    else:
        assert validate_goal(**goal) == loaded


@SETTINGS
@given(good_goals)
def test_goals_within_the_rules_are_accepted_and_kept(goal: dict[str, Any]) -> None:
    # Given a goal that follows every rule
    result = validate_goal(**goal)
    # Then it is accepted, and nothing but the documented normalisation changes it
    assert datafast_problems(result) == []
    assert result["visitor_id"] == goal["visitor_id"]
    assert result["name"] == goal["name"].lower().replace(" ", "_")
    assert result["description"] == goal["description"]
    given_metadata = goal["metadata"] or {}
    assert set(result["metadata"] or {}) == set(given_metadata)
    for key, value in given_metadata.items():
        stored = result["metadata"][key]
        if isinstance(value, float):
            assert float(stored) == value
        else:
            assert stored == stored_value(value)


# ---------------------------------------------------------------------- the producer on Redis


def fake_queue() -> tuple[GoalQueue, fakeredis.FakeRedis]:
    """A GoalQueue on a fresh, empty fakeredis server (Lua enabled)."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return GoalQueue(client=client, settings=Settings()), client


def assert_enqueued(
    client: fakeredis.FakeRedis, event_ids: list[str], goals: list[dict[str, Any]]
) -> None:
    """Exactly one queue message, one ledger entry and one pending id per goal, holding the
    validated fields, and the visitor index's entries."""
    index = {key for key in client.keys("*") if key.startswith(KEYS.visitor_prefix)}
    assert set(client.keys("*")) - index == {KEYS.queue, KEYS.ledger, KEYS.seq, KEYS.pending}
    # (keyed by the visitor id as validated: bytes are decoded)
    assert index == {KEYS.visitor(validate_goal(**goal)["visitor_id"]) for goal in goals}
    assert sum(client.get(key).count(";") for key in index) == len(goals)
    assert client.smembers(KEYS.pending) == set(event_ids)
    assert client.llen(KEYS.queue) == len(goals)
    assert client.zcard(KEYS.ledger) == len(goals)
    assert client.get(KEYS.seq) == str(len(goals))
    entries: list[str] = client.zrange(KEYS.ledger, 0, -1)  # type: ignore[assignment]
    ledger = {event.event_id: event for event in map(GoalEvent.from_json, entries)}
    assert sorted(ledger) == sorted(event_ids)
    for event_id, goal in zip(event_ids, goals, strict=True):
        # Each entry holds the goal as validated, which DataFast's rules accept, not yet tried
        event = ledger[event_id]
        stored = {field: getattr(event, field) for field in FIELDS}
        assert stored == validate_goal(**goal)
        assert datafast_problems(stored) == []
        assert event.attempts == 0
    messages = [json.loads(raw) for raw in client.lrange(KEYS.queue, 0, -1)]
    assert sorted(m["headers"]["id"] for m in messages) == sorted(event_ids)


@SETTINGS
@given(pick(good_goals, any_goals()))
@example({"visitor_id": b"!", "name": "0", "metadata": None, "description": None})
def test_track_goal_writes_one_message_and_one_entry_or_nothing(goal: dict[str, Any]) -> None:
    # Given an empty Redis and arbitrary goal fields
    queue, client = fake_queue()
    # When the goal is tracked
    try:
        event_id = queue.track_goal(
            goal["visitor_id"],
            goal["name"],
            metadata=goal["metadata"],
            description=goal["description"],
        )
    except InvalidGoal:
        # Then a refused goal leaves Redis untouched
        event("refused")
        assert client.dbsize() == 0
        return
    event("accepted")
    # Then an accepted goal is exactly one message plus one ledger entry
    assert_enqueued(client, [event_id], [goal])


@SETTINGS
@given(st.lists(pick(good_goals, any_goals()), min_size=1, max_size=4))
def test_track_goals_is_all_or_nothing(goals: list[dict[str, Any]]) -> None:
    # Given an empty Redis and a batch in which some goals may be invalid
    queue, client = fake_queue()
    # When the batch is tracked
    try:
        event_ids = queue.track_goals(goals)
    except InvalidGoal as exc:
        event("refused")
        # Then nothing is written, and each bad field is named with its goal's index
        assert client.dbsize() == 0
        assert exc.errors
        assert all(re.fullmatch(r"\[\d+\]\.\w+", field) for field in exc.errors)
        return
    event("accepted")
    # Then every goal is exactly one message plus one ledger entry
    assert_enqueued(client, event_ids, goals)


# ---------------------------------------------------------------- examples found while probing


@pytest.mark.parametrize(
    "goal",
    [
        pytest.param({"visitor_id": "\ud800", "name": "signup"}, id="visitor-id"),
        pytest.param(
            {"visitor_id": "v", "name": "signup", "metadata": {"k": "\udc00"}}, id="metadata"
        ),
        pytest.param(
            {"visitor_id": "v", "name": "signup", "description": "\ud83d"}, id="description"
        ),
    ],
)
def test_a_lone_surrogate_is_refused_as_an_invalid_goal(goal: dict[str, Any]) -> None:
    queue, client = fake_queue()
    with pytest.raises(InvalidGoal):
        queue.track_goal(
            goal["visitor_id"],
            goal["name"],
            metadata=goal.get("metadata"),
            description=goal.get("description"),
        )
    assert client.dbsize() == 0


def test_a_float_is_stored_as_text_that_reads_back_as_the_same_number() -> None:
    stored = validate_goal("v", "n", {"x": 0.1 + 0.2})["metadata"]["x"]
    assert not math.isnan(float(stored))
    assert float(stored) == 0.1 + 0.2
