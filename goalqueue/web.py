"""Framework-neutral pieces for tracking goals from a web request.

DataFast's tracking script stores the visitor's id in the ``datafast_visitor_id`` cookie; a
server-side goal must carry that id. The framework integrations in :mod:`goalqueue.integrations`
read the cookie with :func:`visitor_id_from_cookies` and enqueue with
:func:`track_goal_for_visitor` (or, for Django's ``on_commit``, :func:`goal_for_visitor`).

A request without a usable cookie is not an error: the visitor has blocked the script, or came
straight to the API. Nothing is enqueued and the functions return ``None``. A bad goal name,
metadata or description is an error and raises :class:`~goalqueue.errors.InvalidGoal` whether or
not the visitor has the cookie, so a mistake in a view shows on every request, not only on some.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from goalqueue.errors import InvalidGoal
from goalqueue.producer import GoalQueue, default_queue
from goalqueue.schema import validate_goal

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


def goal_for_visitor(
    visitor_id: str | None,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
) -> dict[str, Any] | None:
    """The goal's validated, normalised fields, or ``None`` when there is no usable visitor id.

    A missing visitor id is logged at debug level, a malformed one (a cookie DataFast did not
    set) at warning level; neither raises. Any other bad field raises :class:`InvalidGoal`.
    """
    try:
        fields = validate_goal(
            _NO_VISITOR if visitor_id is None else visitor_id, name, metadata, description
        )
    except InvalidGoal as exc:
        others = {field: why for field, why in exc.errors.items() if field != "visitor_id"}
        if others:
            raise InvalidGoal(others) from exc
        logger.warning(
            "goal %r not tracked: malformed %s cookie %r",
            name,
            VISITOR_COOKIE,
            (visitor_id or "")[:64],
        )
        return None
    if visitor_id is None:
        logger.debug("goal %r not tracked: the request has no %s cookie", name, VISITOR_COOKIE)
        return None
    return fields


def track_goal_for_visitor(
    visitor_id: str | None,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    queue: GoalQueue | None = None,
) -> str | None:
    """Enqueue the goal for this visitor; its event id, or ``None`` if there is no visitor id.

    ``queue`` defaults to the one configured by the environment (``GOALQUEUE_BROKER_URL``).
    Raises :class:`InvalidGoal` for a bad goal and :class:`~goalqueue.errors.EnqueueError` when
    Redis cannot take it.
    """
    fields = goal_for_visitor(visitor_id, name, metadata=metadata, description=description)
    if fields is None:
        return None
    queue = default_queue() if queue is None else queue
    return queue.track_goal(
        fields["visitor_id"],
        fields["name"],
        metadata=fields["metadata"],
        description=fields["description"],
    )
