"""FastAPI: a dependency that gives a view a goal tracker bound to the request's visitor.

    from goalqueue.integrations.fastapi import Goals

    @app.post("/signup")
    def signup(goals: Goals):
        ...
        goals.track("signup", metadata={"plan": plan})

``Goals`` is ``Annotated[GoalTracker, Depends(goal_tracker)]``. ``track`` makes one Redis call,
bounded by ``GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS`` (2 s by default): fine in a ``def`` endpoint,
which FastAPI runs in a worker thread. In an ``async def`` endpoint use
``await goals.track_async(...)``, which runs it in the thread pool instead of blocking the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from goalqueue.producer import GoalQueue
from goalqueue.web import track_goal_for_visitor, visitor_id_from_cookies

__all__ = ["GoalTracker", "Goals", "goal_tracker", "goal_tracker_on"]


@dataclass(frozen=True)
class GoalTracker:
    """Tracks goals for one request's visitor; ``visitor_id`` is ``None`` without the cookie."""

    visitor_id: str | None
    queue: GoalQueue | None = None

    def track(
        self,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
    ) -> str | None:
        """Enqueue a goal; its event id, or ``None`` (nothing enqueued) without a visitor id.

        Raises :class:`~goalqueue.InvalidGoal` for a bad goal, with or without a visitor id, and
        :class:`~goalqueue.EnqueueError` when Redis cannot take it.
        """
        return track_goal_for_visitor(
            self.visitor_id, name, metadata=metadata, description=description, queue=self.queue
        )

    async def track_async(
        self,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
    ) -> str | None:
        """:meth:`track` in the thread pool, for ``async def`` endpoints."""
        return await run_in_threadpool(self.track, name, metadata=metadata, description=description)


def goal_tracker(request: Request) -> GoalTracker:
    """Dependency: a tracker for the request's visitor on the environment-configured queue."""
    return GoalTracker(visitor_id_from_cookies(request.cookies))


def goal_tracker_on(queue: GoalQueue) -> Callable[[Request], GoalTracker]:
    """A dependency like :func:`goal_tracker` that enqueues on ``queue``."""

    def dependency(request: Request) -> GoalTracker:
        return GoalTracker(visitor_id_from_cookies(request.cookies), queue=queue)

    return dependency


Goals = Annotated[GoalTracker, Depends(goal_tracker)]
