"""DataFast's rules for a custom goal, as a marshmallow schema.

The rules come from DataFast's documentation (see the README):

* ``name``: lowercased, spaces become ``_``, then ``^[a-z0-9_:-]{1,64}$``; ``identify`` is reserved.
* ``visitor_id``: the ``datafast_visitor_id`` cookie; non-empty, no whitespace or control
  characters, at most 128 characters.
* ``metadata``: at most 10 keys matching ``^[a-z0-9_-]{1,64}$``; values are strings of at most
  255 characters; int, float and bool values are turned into strings; anything else is refused.
* ``description``: a string of at most 1024 characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from goalqueue.errors import FIELDS_SHOWN, InvalidGoal, quote

NAME_PATTERN = re.compile(r"[a-z0-9_:-]{1,64}")
RESERVED_NAMES = frozenset({"identify"})
VISITOR_PATTERN = re.compile(r"\A[^\s\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,128}\Z")
METADATA_KEY_PATTERN = re.compile(r"[a-z0-9_-]{1,64}")
METADATA_MAX_KEYS = 10
METADATA_VALUE_MAX = 255
DESCRIPTION_MAX = 1024


class GoalName(fields.String):
    """A goal name, normalised the way DataFast stores it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        name = super()._deserialize(value, attr, data, **kwargs).lower().replace(" ", "_")
        if not NAME_PATTERN.fullmatch(name):
            raise ValidationError(
                f"{quote(name)} must be 1-64 characters of a-z, 0-9, '_', '-' or ':' "
                "(after lowercasing and turning spaces into '_')"
            )
        if name in RESERVED_NAMES:
            raise ValidationError(f"{quote(name)} is reserved by DataFast")
        return name


class Metadata(fields.Field[dict[str, str] | None]):
    """Up to 10 string values under lowercase keys; numbers and booleans become strings."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> dict[str, str] | None:
        if not isinstance(value, Mapping):
            raise ValidationError("must be a mapping of keys to values")
        problems = []
        if len(value) > METADATA_MAX_KEYS:
            problems.append(f"has {len(value)} keys, at most {METADATA_MAX_KEYS} are allowed")
        clean: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not METADATA_KEY_PATTERN.fullmatch(key):
                problems.append(f"key {quote(key)} must be 1-64 characters of a-z, 0-9, '_' or '-'")
                continue
            text, problem = _metadata_value(item)
            if problem:
                problems.append(f"value of {quote(key)} {problem}")
            else:
                clean[key] = text
        if problems:
            raise ValidationError(_first(problems))
        return clean or None


def _first(problems: list[str]) -> list[str]:
    """The first few problems, and how many more there are."""
    if len(problems) <= FIELDS_SHOWN:
        return problems
    return [*problems[:FIELDS_SHOWN], f"and {len(problems) - FIELDS_SHOWN} more"]


def _metadata_value(item: object) -> tuple[str, str | None]:
    """The value as DataFast will store it, or why it cannot be stored."""
    if isinstance(item, bool):
        text = "true" if item else "false"
    elif isinstance(item, int):
        if abs(item) >= 10**METADATA_VALUE_MAX:
            return "", f"has more than {METADATA_VALUE_MAX} digits"
        text = str(item)
    elif isinstance(item, float):
        if not math.isfinite(item):
            return "", "must be a finite number"
        text = repr(item)
    elif isinstance(item, str):
        if not is_utf8(item):
            return "", "is not valid Unicode text (a lone surrogate)"
        text = item
    else:
        return "", f"must be a string, number or boolean, not {type(item).__name__}"
    if len(text) > METADATA_VALUE_MAX:
        return "", f"has {len(text)} characters, at most {METADATA_VALUE_MAX} are allowed"
    return text, None


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be sent as UTF-8: JSON input can carry lone surrogates that cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse(message: str) -> bool:
    raise ValidationError(message)


class GoalSchema(Schema):
    """What ``track_goal`` accepts."""

    visitor_id = fields.String(
        required=True,
        validate=validate.Regexp(
            VISITOR_PATTERN,
            error="must be 1-128 characters with no whitespace or control characters",
        ),
    )
    name = GoalName(required=True)
    metadata = Metadata(load_default=None, allow_none=True)
    description = fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            validate.Length(max=DESCRIPTION_MAX),
            lambda text: is_utf8(text) or _refuse("is not valid Unicode text (a lone surrogate)"),
        ],
    )


# GoalSchema's fields make every check: it has no hooks, no schema-level validators and nothing
# nested, so each field's own deserialize() is all that GoalSchema().load() runs, without
# load()'s machinery around it (an error store, a closure a field a call), which costs as much
# again as the checks themselves (tests/test_properties.py holds the two to the same answers).
_FIELDS = tuple(GoalSchema().load_fields.items())


def validate_goal(
    visitor_id: object, name: object, metadata: object = None, description: object = None
) -> dict[str, Any]:
    """The goal's fields, normalised; :class:`InvalidGoal` names every bad field and why."""
    raw = {"visitor_id": visitor_id, "name": name, "metadata": metadata, "description": description}
    valid: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    for key, field in _FIELDS:
        try:
            valid[key] = field.deserialize(raw[key], key, raw)
        except ValidationError as exc:
            errors[key] = exc.messages
    if errors:
        raise InvalidGoal(_flatten(errors))
    return valid


def _flatten(messages: Mapping[str, Any]) -> dict[str, list[str]]:
    flat: dict[str, list[str]] = {}
    for field, why in messages.items():
        flat[field] = [str(w) for w in why] if isinstance(why, list) else [str(why)]
    return flat
