"""Table tests for ``goalqueue.schema.validate_goal``: DataFast's rules for one custom goal.

Each table row is one input and what the producer must do with it: accept it (and normalise it
the way DataFast stores it) or refuse it with :class:`goalqueue.InvalidGoal` naming the field.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from goalqueue import GoalQueueError, InvalidGoal
from goalqueue.goals import goal_events
from goalqueue.schema import validate_goal

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def refused(
    visitor_id: object = VISITOR,
    name: object = "signup",
    metadata: object = None,
    description: object = None,
) -> InvalidGoal:
    """The InvalidGoal that validating these fields raises (fails the test if none is raised)."""
    with pytest.raises(InvalidGoal) as caught:
        validate_goal(visitor_id, name, metadata, description)
    return caught.value


# --------------------------------------------------------------------------------------- name


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("signup", "signup"),
        ("SignUp", "signup"),
        ("Sign Up", "sign_up"),
        ("  two  spaces ", "__two__spaces_"),
        ("checkout:completed", "checkout:completed"),
        ("plan-upgrade_2", "plan-upgrade_2"),
        ("0", "0"),
        ("_", "_"),
        (" ", "_"),
        ("a" * 64, "a" * 64),
        ("A" * 63 + " ", "a" * 63 + "_"),
        ("IDENTIFY_USER", "identify_user"),
        ("identify:later", "identify:later"),
    ],
)
def test_name_is_normalised_the_way_datafast_stores_it(given: str, stored: str) -> None:
    # Given a goal name DataFast accepts once lowercased with spaces turned into "_"
    # When it is validated
    goal = validate_goal(VISITOR, given)
    # Then the stored form is the normalised one
    assert goal["name"] == stored


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("A" * 65, id="65-chars-upper"),
        pytest.param("sign.up", id="dot"),
        pytest.param("sign/up", id="slash"),
        pytest.param("sign\tup", id="tab-is-not-a-space"),
        pytest.param("sign\nup", id="newline"),
        pytest.param("café", id="non-ascii"),
        pytest.param("signup!", id="bang"),
        pytest.param("<script>", id="html"),
        pytest.param("identify", id="reserved"),
        pytest.param("Identify", id="reserved-after-lowercasing"),
        pytest.param("IDENTIFY", id="reserved-upper"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param(["signup"], id="list"),
    ],
)
def test_bad_names_are_refused(name: object) -> None:
    error = refused(name=name)
    assert set(error.errors) == {"name"}
    assert all(isinstance(why, str) and why for why in error.errors["name"])


def test_reserved_name_says_it_is_reserved() -> None:
    error = refused(name="Identify")
    assert "reserved" in " ".join(error.errors["name"])


def test_name_length_boundary_is_64_after_normalisation() -> None:
    assert validate_goal(VISITOR, "x" * 64)["name"] == "x" * 64
    assert "name" in refused(name="x" * 65).errors


# ---------------------------------------------------------------------------------- visitor id


@pytest.mark.parametrize(
    "visitor_id",
    [
        VISITOR,
        "v",
        "x" * 128,
        "visitor:1/2@example",
        "déjà-vu",
    ],
)
def test_good_visitor_ids_are_kept_as_they_are(visitor_id: str) -> None:
    assert validate_goal(visitor_id, "signup")["visitor_id"] == visitor_id


@pytest.mark.parametrize(
    "visitor_id",
    [
        pytest.param("", id="empty"),
        pytest.param(" ", id="space"),
        pytest.param("   ", id="spaces"),
        pytest.param("abc def", id="inner-space"),
        pytest.param(" abc", id="leading-space"),
        pytest.param("abc\n", id="trailing-newline"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\u00a0b", id="nbsp"),
        pytest.param("a\u2028b", id="line-separator"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x1bb", id="escape"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("a\x85b", id="c1-control"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param(None, id="none"),
        pytest.param(12345, id="int"),
        pytest.param(["v"], id="list"),
        pytest.param({"id": "v"}, id="dict"),
    ],
)
def test_bad_visitor_ids_are_refused(visitor_id: object) -> None:
    error = refused(visitor_id=visitor_id)
    assert set(error.errors) == {"visitor_id"}


# ------------------------------------------------------------------------------------ metadata


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        pytest.param(None, None, id="none"),
        pytest.param({}, None, id="empty-becomes-none"),
        pytest.param({"plan": "pro"}, {"plan": "pro"}, id="string"),
        pytest.param({"plan": ""}, {"plan": ""}, id="empty-string"),
        pytest.param({"seats": 3}, {"seats": "3"}, id="int"),
        pytest.param({"seats": -3}, {"seats": "-3"}, id="negative-int"),
        pytest.param({"amount": 9.5}, {"amount": "9.5"}, id="float"),
        pytest.param({"trial": True}, {"trial": "true"}, id="true"),
        pytest.param({"trial": False}, {"trial": "false"}, id="false"),
        pytest.param({"k": "x" * 255}, {"k": "x" * 255}, id="255-chars"),
        pytest.param({"a-b_c9": "v"}, {"a-b_c9": "v"}, id="key-charset"),
        pytest.param({"k" * 64: "v"}, {"k" * 64: "v"}, id="64-char-key"),
        pytest.param(
            {f"k{i}": str(i) for i in range(10)},
            {f"k{i}": str(i) for i in range(10)},
            id="10-keys",
        ),
    ],
)
def test_good_metadata_is_stored_as_strings(given: Any, stored: Any) -> None:
    assert validate_goal(VISITOR, "signup", given)["metadata"] == stored


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({f"k{i}": "v" for i in range(11)}, id="11-keys"),
        pytest.param({"": "v"}, id="empty-key"),
        pytest.param({"Plan": "pro"}, id="upper-key"),
        pytest.param({"plan type": "pro"}, id="space-in-key"),
        pytest.param({"plan:type": "pro"}, id="colon-in-key"),
        pytest.param({"k" * 65: "v"}, id="65-char-key"),
        pytest.param({1: "v"}, id="int-key"),
        pytest.param({"k": "x" * 256}, id="256-char-value"),
        pytest.param({"k": None}, id="none-value"),
        pytest.param({"k": ["a"]}, id="list-value"),
        pytest.param({"k": {"a": "b"}}, id="dict-value"),
        pytest.param({"k": b"bytes"}, id="bytes-value"),
        pytest.param({"k": math.nan}, id="nan"),
        pytest.param({"k": math.inf}, id="inf"),
        pytest.param({"k": -math.inf}, id="minus-inf"),
        pytest.param(["plan", "pro"], id="list"),
        pytest.param("plan=pro", id="string"),
        pytest.param(42, id="int"),
    ],
)
def test_bad_metadata_is_refused(metadata: object) -> None:
    error = refused(metadata=metadata)
    assert set(error.errors) == {"metadata"}


def test_every_bad_metadata_entry_is_reported() -> None:
    # Given metadata with a bad key, a bad value and a good entry
    error = refused(metadata={"Bad": "v", "nested": {"a": 1}, "fine": "ok"})
    # Then both problems are named, and the good entry is not
    reasons = " | ".join(error.errors["metadata"])
    assert "'Bad'" in reasons
    assert "'nested'" in reasons
    assert "'fine'" not in reasons


# --------------------------------------------------------------------------------- description


@pytest.mark.parametrize("description", [None, "", "Upgraded to <b>pro</b>", "d" * 1024])
def test_good_descriptions_are_kept(description: str | None) -> None:
    assert validate_goal(VISITOR, "signup", None, description)["description"] == description


@pytest.mark.parametrize(
    "description",
    [
        pytest.param("d" * 1025, id="1025-chars"),
        pytest.param(42, id="int"),
        pytest.param(["d"], id="list"),
        pytest.param({"d": 1}, id="dict"),
    ],
)
def test_bad_descriptions_are_refused(description: object) -> None:
    assert set(refused(description=description).errors) == {"description"}


# --------------------------------------------------------------------------------- InvalidGoal


def test_a_valid_goal_comes_back_whole_and_normalised() -> None:
    goal = validate_goal(VISITOR, "Sign Up", {"plan": "pro", "seats": 2}, "first goal")
    assert goal == {
        "visitor_id": VISITOR,
        "name": "sign_up",
        "metadata": {"plan": "pro", "seats": "2"},
        "description": "first goal",
    }


def test_invalid_goal_is_a_value_error_and_a_goalqueue_error() -> None:
    error = refused(name="identify")
    assert isinstance(error, ValueError)
    assert isinstance(error, GoalQueueError)


def test_invalid_goal_names_every_bad_field_at_once() -> None:
    # Given a goal where every field is wrong
    # When it is validated
    error = refused(
        visitor_id="has space",
        name="Identify",
        metadata={f"k{i}": "v" for i in range(11)},
        description="d" * 1025,
    )
    # Then every field is named, each with at least one readable reason
    assert set(error.errors) == {"visitor_id", "name", "metadata", "description"}
    for field, reasons in error.errors.items():
        assert reasons, field
        assert all(isinstance(reason, str) and reason for reason in reasons)
        assert field in str(error)


def test_invalid_goal_errors_are_plain_lists_of_strings() -> None:
    error = InvalidGoal({"name": ("too long",), "visitor_id": ["empty", "bad"]})
    assert error.errors == {"name": ["too long"], "visitor_id": ["empty", "bad"]}
    assert str(error) == "invalid goal: name: too long; visitor_id: empty, bad"


def test_an_int_too_long_as_text_is_refused() -> None:
    # Given an int whose decimal form has 301 characters (> 255)
    error = refused(metadata={"big": 10**300})
    # Then it is refused like any over-long value
    assert "255" in " ".join(error.errors["metadata"])


def test_a_huge_int_is_refused_with_invalid_goal() -> None:
    error = refused(metadata={"big": 10**4300})
    assert set(error.errors) == {"metadata"}


def test_an_error_quotes_a_short_prefix_of_a_huge_bad_value() -> None:
    # Given a 1 MB goal name and 10,000 bad metadata keys
    with pytest.raises(InvalidGoal) as raised:
        validate_goal("v", "N!" * 500_000, {f"Bad Key {i}": "x" for i in range(10_000)})
    # Then the message quotes a few dozen characters of each and counts the rest
    message = str(raised.value)
    assert len(message) < 1_000, len(message)
    assert "(1000002 characters)" in message
    assert "and 9996 more" in message


def test_a_bulk_of_bad_goals_names_a_few_fields_and_counts_the_rest() -> None:
    with pytest.raises(InvalidGoal) as raised:
        goal_events([{"visitor_id": "v", "name": "bad name!"}] * 1_000)
    assert len(raised.value.errors) == 1_000
    assert "and 995 more bad field(s)" in str(raised.value)
    assert len(str(raised.value)) < 1_500
