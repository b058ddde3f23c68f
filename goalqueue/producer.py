"""The web app's side: validate a goal, stamp it, enqueue it in one Redis round trip."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import cache
from typing import Any

import redis

from goalqueue import keys
from goalqueue.config import Settings, get_settings
from goalqueue.errors import EnqueueError, InvalidGoal
from goalqueue.event import GoalEvent
from goalqueue.message import TEMPLATE
from goalqueue.schema import validate_goal
from goalqueue.scripts import ScriptArg, Scripts

# Goals per Lua call in a bulk enqueue: large enough to amortise the call, small enough that one
# call never holds Redis for long.
CHUNK = 500


def connect(settings: Settings) -> redis.Redis:
    """A Redis client for the broker, with the enqueue timeout on every socket operation."""
    timeout = settings.enqueue_timeout_seconds
    return redis.Redis.from_url(
        settings.broker_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )


class GoalQueue:
    """Enqueues goal events for delivery to DataFast.

    ``GoalQueue()`` reads the broker from ``GOALQUEUE_BROKER_URL``; ``GoalQueue(broker_url=...)``
    sets it explicitly.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        settings = settings or get_settings()
        if broker_url is not None:
            settings = replace(settings, broker_url=broker_url)
        self.settings = settings
        self.redis = client or connect(settings)
        self.scripts = Scripts(self.redis)

    def track_goal(
        self,
        visitor_id: str,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
    ) -> str:
        """Validate and enqueue one goal; returns its event id."""
        event = new_event(validate_goal(visitor_id, name, metadata, description))
        self._enqueue([event])
        return event.event_id

    def track_goals(self, goals: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every goal, then enqueue them all in one round trip; returns their event ids.

        Each goal is a mapping with ``visitor_id`` and ``name`` and optionally ``metadata`` and
        ``description``. If any goal is invalid, none is enqueued, and :class:`InvalidGoal` names
        each bad field as ``[index].field``.
        """
        events, errors = [], {}
        for index, goal in enumerate(goals):
            try:
                events.append(new_event(validate_goal(**_goal_fields(goal))))
            except InvalidGoal as exc:
                errors.update({f"[{index}].{field}": why for field, why in exc.errors.items()})
        if errors:
            raise InvalidGoal(errors)
        self._enqueue(events)
        return [event.event_id for event in events]

    def enqueue_events(self, events: list[GoalEvent]) -> None:
        """Enqueue events that already carry their ids (the spool and replays use this)."""
        self._enqueue(events)

    def _enqueue(self, events: list[GoalEvent]) -> None:
        if not events:
            return
        try:
            if len(events) == 1:
                self.scripts.enqueue(_script_args(events))
                return
            with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(events), CHUNK):
                    self.scripts.enqueue(_script_args(events[start : start + CHUNK]), client=pipe)
                pipe.execute()
        except redis.RedisError as exc:
            raise EnqueueError(
                f"could not enqueue {len(events)} goal(s) on {keys.QUEUE!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def new_event(fields: Mapping[str, Any]) -> GoalEvent:
    """A fresh event for validated fields: a new UUID and the enqueue time."""
    return GoalEvent(
        event_id=str(uuid.uuid4()),
        visitor_id=fields["visitor_id"],
        name=fields["name"],
        metadata=fields["metadata"],
        description=fields["description"],
        enqueued_at=round(time.time(), 3),
    )


def _goal_fields(goal: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(goal, Mapping):
        raise InvalidGoal({"goal": [f"must be a mapping, not {type(goal).__name__}"]})
    unknown = set(goal) - {"visitor_id", "name", "metadata", "description"}
    if unknown:
        raise InvalidGoal({field: ["unknown field"] for field in sorted(unknown)})
    return {
        "visitor_id": goal.get("visitor_id"),
        "name": goal.get("name"),
        "metadata": goal.get("metadata"),
        "description": goal.get("description"),
    }


def _script_args(events: list[GoalEvent]) -> list[ScriptArg]:
    args: list[ScriptArg] = [TEMPLATE]
    for event in events:
        args += (event.event_id, event.to_json())
    return args


@cache
def default_queue() -> GoalQueue:
    """The process-wide queue that :func:`track_goal` uses, configured from the environment."""
    return GoalQueue()


def track_goal(
    visitor_id: str,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
) -> str:
    """Validate and enqueue one goal on the queue configured by the environment."""
    return default_queue().track_goal(visitor_id, name, metadata=metadata, description=description)
