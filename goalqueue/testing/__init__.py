"""Test your own app's goal tracking with no Redis and no worker.

With pytest, ask for the ``goalqueue_recorder`` fixture (the plugin in
:mod:`goalqueue.testing.pytest_plugin` is loaded whenever goalqueue is installed)::

    def test_signup_tracks_a_goal(client, goalqueue_recorder):
        client.post("/signup", ..., cookies={"datafast_visitor_id": VISITOR})
        goalqueue_recorder.assert_tracked("signup", visitor_id=VISITOR, metadata={"plan": "pro"})

Elsewhere, ``with goalqueue.testing.recording() as recorder: ...``.

While it records, every producer of the process records instead of enqueueing: ``track_goal``
and ``track_goals``, ``atrack_goal``, the Flask, Django and FastAPI helpers (an app made during the
test included). Goals are validated exactly as in production (the same code: a bad goal raises
:class:`~goalqueue.InvalidGoal`), an event id already recorded is not recorded again (as Redis
would not enqueue it twice), and nothing is sent anywhere. Django's goals are enqueued when the
transaction commits: in a ``TestCase``, wrap the request in
``self.captureOnCommitCallbacks(execute=True)`` (or use a ``TransactionTestCase``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from goalqueue.asyncio import AsyncGoalQueue, set_default_async_queue
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from goalqueue.producer import GoalQueue, pin_default_queue
from goalqueue.schema import validate_goal
from goalqueue.spool import Backlog

__all__ = ["GoalRecorder", "TrackedGoal", "recording"]

_ANY: Any = object()


@dataclass(frozen=True)
class TrackedGoal:
    """One goal the app tracked, as it would have been enqueued (normalised)."""

    event_id: str
    visitor_id: str
    name: str
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None

    @classmethod
    def of(cls, event: GoalEvent) -> TrackedGoal:
        return cls(
            event.event_id, event.visitor_id, event.name, event.metadata or {}, event.description
        )


class GoalRecorder:
    """The goals tracked while it records, in order, and assertions about them."""

    def __init__(self) -> None:
        self.goals: list[TrackedGoal] = []

    @property
    def names(self) -> list[str]:
        """The names of the tracked goals, in order."""
        return [goal.name for goal in self.goals]

    def record(self, events: Sequence[GoalEvent]) -> None:
        """Record ``events`` as enqueued; an event id already recorded is skipped."""
        known = {goal.event_id for goal in self.goals}
        for event in events:
            if event.event_id not in known:
                known.add(event.event_id)
                self.goals.append(TrackedGoal.of(event))

    def find(
        self,
        name: str,
        *,
        visitor_id: str = _ANY,
        metadata: Mapping[str, object] | None = _ANY,
        description: str | None = _ANY,
    ) -> list[TrackedGoal]:
        """The tracked goals named ``name`` (normalised as DataFast stores it) whose other
        given fields match (metadata compared as it would be sent: numbers as text)."""
        wanted = validate_goal("-", name, None if metadata is _ANY else metadata, None)
        return [
            goal
            for goal in self.goals
            if goal.name == wanted["name"]
            and visitor_id in (_ANY, goal.visitor_id)
            and (metadata is _ANY or goal.metadata == (wanted["metadata"] or {}))
            and (description is _ANY or goal.description == description)
        ]

    def assert_tracked(
        self,
        name: str,
        *,
        visitor_id: str = _ANY,
        metadata: Mapping[str, object] | None = _ANY,
        description: str | None = _ANY,
        times: int | None = None,
    ) -> TrackedGoal:
        """Fail unless a goal like this was tracked (exactly ``times`` times, if given);
        returns the last one."""
        found = self.find(name, visitor_id=visitor_id, metadata=metadata, description=description)
        if not found or (times is not None and len(found) != times):
            wanted = f"{times} goal(s)" if times is not None else "a goal"
            raise AssertionError(
                f"expected {wanted} {name!r} matching {_given(visitor_id, metadata, description)}"
                f", found {len(found)}; tracked: {self._listing()}"
            )
        return found[-1]

    def assert_not_tracked(self, name: str | None = None) -> None:
        """Fail if a goal named ``name`` (any goal, without a name) was tracked."""
        found = self.goals if name is None else self.find(name)
        if found:
            what = "no goal" if name is None else f"no goal {name!r}"
            raise AssertionError(f"expected {what}; tracked: {self._listing()}")

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.goals.clear()

    def _listing(self) -> str:
        if not self.goals:
            return "nothing"
        return "; ".join(
            f"{goal.name} (visitor {goal.visitor_id!r}, metadata {goal.metadata})"
            for goal in self.goals
        )


class _Recording:
    """What the recording queues hold instead of a Redis client and a spool."""

    backlog: Backlog | None

    def __init__(self, recorder: GoalRecorder) -> None:
        self.settings = Settings()
        self.backlog = None
        self.recorder = recorder


class RecordingQueue(_Recording, GoalQueue):
    """A :class:`~goalqueue.GoalQueue` that records instead of enqueueing: no Redis, no spool."""

    def enqueue(self, events: Sequence[GoalEvent], *, new_ids: bool = False) -> None:
        self.recorder.record(events)

    def close(self) -> None:
        """Nothing to close."""


class RecordingAsyncQueue(_Recording, AsyncGoalQueue):
    """An :class:`~goalqueue.AsyncGoalQueue` that records instead of enqueueing."""

    async def enqueue(self, events: Sequence[GoalEvent], *, new_ids: bool = False) -> None:
        self.recorder.record(events)

    async def aclose(self) -> None:
        """Nothing to close."""


@contextmanager
def recording() -> Iterator[GoalRecorder]:
    """Record every goal the process tracks, blocking and asyncio, until the block ends."""
    recorder = GoalRecorder()
    pin_default_queue(RecordingQueue(recorder))
    previous = set_default_async_queue(lambda: RecordingAsyncQueue(recorder))
    try:
        yield recorder
    finally:
        pin_default_queue(None)
        set_default_async_queue(previous)


def _given(*fields: object) -> str:
    names = ("visitor_id", "metadata", "description")
    given = {name: value for name, value in zip(names, fields, strict=True) if value is not _ANY}
    return str(given) if given else "anything"
