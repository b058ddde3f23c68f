"""Flask: track a goal for the visitor behind the current request.

from goalqueue.integrations.flask import track_goal_from_request

@app.post("/signup")
def signup():
    ...
    track_goal_from_request("signup", metadata={"plan": plan})
"""

from __future__ import annotations

from collections.abc import Mapping

import flask

from goalqueue.producer import GoalQueue
from goalqueue.web import track_goal_for_visitor, visitor_id_from_cookies

__all__ = ["track_goal_from_request"]


def track_goal_from_request(
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    request: flask.Request | None = None,
    queue: GoalQueue | None = None,
) -> str | None:
    """Enqueue a goal for the visitor in ``request``'s ``datafast_visitor_id`` cookie.

    ``request`` defaults to :data:`flask.request`; ``queue`` to the one configured by the
    environment. Returns the event id, or ``None`` (and enqueues nothing) when the request has
    no usable cookie. Raises :class:`~goalqueue.InvalidGoal` for a bad goal, with or without the
    cookie, and :class:`~goalqueue.EnqueueError` when Redis cannot take it (one fast call,
    bounded by ``GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS``).
    """
    cookies = (flask.request if request is None else request).cookies
    return track_goal_for_visitor(
        visitor_id_from_cookies(cookies),
        name,
        metadata=metadata,
        description=description,
        queue=queue,
    )
