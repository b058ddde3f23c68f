"""Framework-neutral pieces for tracking goals from a web request.

DataFast's tracking script stores the visitor's id in the ``datafast_visitor_id`` cookie; a
server-side goal must carry that id. The framework integrations in :mod:`goalqueue.integrations`
read the cookie with :func:`visitor_id_from_cookies`, make the goal's event with
:func:`event_for_visitor` and enqueue it through the queue's one path
(:meth:`goalqueue.GoalQueue.enqueue`, or :meth:`goalqueue.AsyncGoalQueue.enqueue`): the spool
covers them exactly as it covers ``track_goal``.

A request without a usable cookie is not an error: the visitor has blocked the script, or came
straight to the API. Nothing is enqueued and the helpers return ``None``. A bad goal name,
metadata or description is an error and raises :class:`~goalqueue.errors.InvalidGoal` whether or
not the visitor has the cookie, so a mistake in a view shows on every request, not only on some.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from goalqueue.errors import InvalidGoal
from goalqueue.event import GoalEvent
from goalqueue.goals import goal_event

VISITOR_COOKIE = "datafast_visitor_id"

# Stands in for an absent visitor id so the other fields are still checked.
_NO_VISITOR = "-"

logger = logging.getLogger(__name__)


def visitor_id_from_cookies(cookies: Mapping[str, str]) -> str | None:
    """The DataFast visitor id from a request's cookies; ``None`` when absent or blank."""
    value = cookies.get(VISITOR_COOKIE)
    if value is None:
        return None
    return value.strip() or None


def event_for_request(
    cookies: Mapping[str, str],
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    event_id: str | None = None,
) -> GoalEvent | None:
    """:func:`event_for_visitor` for the visitor in a request's ``cookies``."""
    visitor_id = visitor_id_from_cookies(cookies)
    return event_for_visitor(
        visitor_id, name, metadata=metadata, description=description, event_id=event_id
    )


def event_for_visitor(
    visitor_id: str | None,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    event_id: str | None = None,
) -> GoalEvent | None:
    """The goal's event, validated, or ``None`` when there is no usable visitor id.

    A missing visitor id is logged at debug level, a malformed one (a cookie DataFast did not
    set) at warning level; neither raises. Any other bad field raises :class:`InvalidGoal`.
    """
    try:
        event = goal_event(
            _NO_VISITOR if visitor_id is None else visitor_id,
            name,
            metadata,
            description,
            event_id,
        )
    except InvalidGoal as exc:
        others = {field: why for field, why in exc.errors.items() if field != "visitor_id"}
        if others:
            raise InvalidGoal(others) from exc
        logger.warning(
            "goal %r not tracked: malformed %s cookie %r",
            str(name)[:64],
            VISITOR_COOKIE,
            (visitor_id or "")[:64],
        )
        return None
    if visitor_id is None:
        logger.debug("goal %r not tracked: the request has no %s cookie", name, VISITOR_COOKIE)
        return None
    return event
