"""From what a caller passes to a goal event ready to enqueue: validated, normalised, stamped.

Every producer (the blocking :class:`~goalqueue.GoalQueue`, the asyncio
:class:`~goalqueue.AsyncGoalQueue`, the web integrations, ``goalqueue send`` and the testing kit's
recorder) makes its events here, so they all validate alike.

An event id is a UUID. A caller that may retry (after an :class:`~goalqueue.EnqueueError`, or a
job that can run twice) passes its own, for example ``uuid.uuid5(NAMESPACE, order_id)``: the same
id enqueued again while goalqueue knows it adds nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from goalqueue.errors import QUOTE_LIMIT, InvalidGoal, quote
from goalqueue.event import GoalEvent
from goalqueue.schema import validate_goal

FIELDS = frozenset({"visitor_id", "name", "metadata", "description", "event_id"})


def new_event(fields: Mapping[str, Any], event_id: str | None = None) -> GoalEvent:
    """The event for validated ``fields``: ``event_id`` (a new UUID by default) and the time."""
    return GoalEvent(
        event_id=event_id or new_id(),
        visitor_id=fields["visitor_id"],
        name=fields["name"],
        metadata=fields["metadata"],
        description=fields["description"],
        enqueued_at=time.time_ns() // 1_000_000 / 1000,  # in ms: round(time.time(), 3) costs 3x
    )


def goal_event(
    visitor_id: object,
    name: object,
    metadata: object = None,
    description: object = None,
    event_id: object = None,
) -> GoalEvent:
    """One validated event; :class:`InvalidGoal` names every bad field."""
    errors: dict[str, list[str]] = {}
    try:
        fields = validate_goal(visitor_id, name, metadata, description)
    except InvalidGoal as exc:
        errors = exc.errors
    try:
        chosen = event_id_of(event_id)
    except InvalidGoal as exc:
        errors |= exc.errors
    if errors:
        raise InvalidGoal(errors)
    return new_event(fields, chosen)


def goal_events(goals: Iterable[Mapping[str, Any]]) -> list[GoalEvent]:
    """Validated events for many goals, each a mapping of :data:`FIELDS` (``visitor_id`` and
    ``name`` required); if any is bad, :class:`InvalidGoal` names each bad field as
    ``[index].field`` and none is made."""
    events, errors = [], {}
    for index, goal in enumerate(goals):
        try:
            events.append(goal_event(**_fields(goal)))
        except InvalidGoal as exc:
            errors.update({f"[{index}].{field}": why for field, why in exc.errors.items()})
    if errors:
        raise InvalidGoal(errors)
    return events


def new_id() -> str:
    """A random UUID (version 4) in canonical form: ``str(uuid.uuid4())``'s bits and text, made
    without the UUID object (at half the cost)."""
    bits = int.from_bytes(os.urandom(16)) & _CLEARED | _VERSION_4
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_CLEARED = ~(0xF000 << 64 | 0xC000 << 48)  # the version and the variant bits (RFC 4122)
_VERSION_4 = 0x4000 << 64 | 0x8000 << 48


def minted(goals: Iterable[Mapping[str, Any]]) -> bool:
    """Whether every goal's event id is one :func:`new_event` makes (a random UUID, which no
    goal can have yet): none of ``goals`` (valid goals) gives its own."""
    return all(goal.get("event_id") is None for goal in goals)


def event_id_of(value: object) -> str | None:
    """A caller's event id in canonical form (a UUID, as text or ``uuid.UUID``), or None."""
    if value is None or isinstance(value, uuid.UUID):
        return None if value is None else str(value)
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else _not_a_uuid(value)
    except ValueError:
        return _not_a_uuid(value)


def _not_a_uuid(value: object) -> str:
    raise InvalidGoal({"event_id": [f"{quote(value)} must be a UUID"]})


def _fields(goal: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(goal, Mapping):
        raise InvalidGoal({"goal": [f"must be a mapping, not {type(goal).__name__}"]})
    if unknown := set(goal) - FIELDS:
        raise InvalidGoal({str(field)[:QUOTE_LIMIT]: ["unknown field"] for field in unknown})
    return {field: goal.get(field) for field in FIELDS}
