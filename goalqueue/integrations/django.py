"""Django: track a goal for the visitor behind a request, once the transaction commits.

    from django.db import transaction
    from goalqueue.integrations.django import track_goal_from_request

    @transaction.atomic
    def signup(request):
        user = User.objects.create_user(...)
        track_goal_from_request(request, "signup", metadata={"plan": plan})
        ...

The goal is validated at once, so a bad goal raises in the view, but enqueued only by
:func:`django.db.transaction.on_commit`: a signup that rolls back sends no goal. Outside a
transaction (autocommit), ``on_commit`` runs the enqueue immediately. The call is synchronous
(Django's ORM and ``on_commit`` are too): from an ``async def`` view, wrap it in
``asgiref.sync.sync_to_async``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from django.db import transaction
from django.http import HttpRequest

from goalqueue.errors import EnqueueError
from goalqueue.producer import GoalQueue, default_queue, new_event
from goalqueue.web import goal_for_visitor, visitor_id_from_cookies

__all__ = ["track_goal_from_request"]

logger = logging.getLogger(__name__)


def track_goal_from_request(
    request: HttpRequest,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    queue: GoalQueue | None = None,
    using: str | None = None,
) -> str | None:
    """Validate a goal for ``request``'s visitor now; enqueue it when the transaction commits.

    Returns the event id the goal will carry once enqueued, or ``None`` (and schedules nothing)
    when the request has no usable ``datafast_visitor_id`` cookie. If the transaction rolls back
    the goal is dropped and the id is never used. ``using`` is the database alias whose
    transaction to wait for; ``queue`` defaults to the one configured by the environment.

    Raises :class:`~goalqueue.InvalidGoal` at call time for a bad goal, with or without the
    cookie. An :class:`~goalqueue.EnqueueError` after the commit cannot undo the committed work,
    so it is logged (with the goal's JSON, for a manual replay) instead of raised.
    """
    fields = goal_for_visitor(
        visitor_id_from_cookies(request.COOKIES),
        name,
        metadata=metadata,
        description=description,
    )
    if fields is None:
        return None
    queue = default_queue() if queue is None else queue
    event_id = str(uuid.uuid4())
    transaction.on_commit(lambda: _enqueue(queue, event_id, fields), using=using)
    return event_id


def _enqueue(queue: GoalQueue, event_id: str, fields: Mapping[str, Any]) -> None:
    event = replace(new_event(fields), event_id=event_id)
    try:
        queue.enqueue_events([event])
    except EnqueueError:
        logger.exception("goal %s lost after commit: %s", event_id, event.to_json())
