"""FastAPI: the asyncio producer, checked at start, and a dependency bound to the request's visitor.

    from goalqueue.integrations.fastapi import Goals, lifespan

    app = FastAPI(lifespan=lifespan)

    @app.post("/signup")
    async def signup(goals: Goals):
        ...
        await goals.track_async("signup", metadata={"plan": plan})

:func:`lifespan` makes the loop's :class:`~goalqueue.AsyncGoalQueue` when the server starts (a bad
setting stops it there, with the one line ``goalqueue`` commands print) and closes it at shutdown;
compose it with a lifespan of your own with ``async with lifespan(app): ...``. ``Goals`` is
``Annotated[GoalTracker, Depends(goal_tracker)]``. In an ``async def`` endpoint,
``await goals.track_async(...)`` enqueues on ``redis.asyncio`` without blocking the loop, spooling
(in a thread) when Redis cannot take the goal in time. In a plain ``def`` endpoint (which FastAPI
runs in a thread) use ``goals.track(...)``, the blocking producer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from goalqueue.asyncio import AsyncGoalQueue, close_default_async_queue, default_async_queue
from goalqueue.event import GoalEvent
from goalqueue.producer import GoalQueue, default_queue
from goalqueue.web import event_for_visitor, visitor_id_from_cookies

__all__ = ["GoalTracker", "Goals", "goal_tracker", "goal_tracker_on", "lifespan"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Make the loop's queue at start (raising :class:`~goalqueue.ConfigError` for a bad
    setting) and close it at shutdown."""
    default_async_queue()
    try:
        yield
    finally:
        await close_default_async_queue()


@dataclass(frozen=True)
class GoalTracker:
    """Tracks goals for one request's visitor; ``visitor_id`` is ``None`` without the cookie.

    ``queue`` and ``async_queue`` default to the process-wide ones.
    """

    visitor_id: str | None
    queue: GoalQueue | None = None
    async_queue: AsyncGoalQueue | None = None

    def track(
        self,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
        event_id: str | None = None,
    ) -> str | None:
        """Enqueue a goal with the blocking producer (for ``def`` endpoints); its event id, or
        ``None`` (nothing enqueued) without a visitor id.

        Raises :class:`~goalqueue.InvalidGoal` for a bad goal, with or without a visitor id, and
        :class:`~goalqueue.EnqueueError` when Redis does not confirm it and no spool keeps it.
        """
        event = self._event(name, metadata, description, event_id)
        if event is None:
            return None
        (self.queue or default_queue()).enqueue([event], new_ids=event_id is None)
        return event.event_id

    async def track_async(
        self,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
        event_id: str | None = None,
    ) -> str | None:
        """:meth:`track` with the asyncio producer, for ``async def`` endpoints (with only a
        blocking ``queue`` given, that one, in a worker thread)."""
        event = self._event(name, metadata, description, event_id)
        if event is None:
            return None
        if self.async_queue is None and self.queue is not None:
            await asyncio.to_thread(self.queue.enqueue, [event], new_ids=event_id is None)
        else:
            await (self.async_queue or default_async_queue()).enqueue(
                [event], new_ids=event_id is None
            )
        return event.event_id

    def _event(
        self,
        name: str,
        metadata: Mapping[str, object] | None,
        description: str | None,
        event_id: str | None,
    ) -> GoalEvent | None:
        return event_for_visitor(
            self.visitor_id, name, metadata=metadata, description=description, event_id=event_id
        )


def goal_tracker(request: Request) -> GoalTracker:
    """Dependency: a tracker for the request's visitor on the process-wide queues."""
    return GoalTracker(visitor_id_from_cookies(request.cookies))


def goal_tracker_on(queue: GoalQueue | AsyncGoalQueue) -> Callable[[Request], GoalTracker]:
    """A dependency like :func:`goal_tracker` that enqueues on ``queue``."""

    def dependency(request: Request) -> GoalTracker:
        visitor_id = visitor_id_from_cookies(request.cookies)
        if isinstance(queue, AsyncGoalQueue):
            return GoalTracker(visitor_id, async_queue=queue)
        return GoalTracker(visitor_id, queue=queue)

    return dependency


Goals = Annotated[GoalTracker, Depends(goal_tracker)]
