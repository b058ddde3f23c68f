"""Django: track a goal for the visitor behind a request, once the transaction commits.

    # settings.py
    INSTALLED_APPS = [..., "goalqueue.integrations.django"]
    GOALQUEUE = {"BROKER_URL": "redis://redis:6379/0", "SPOOL_DIR": "/var/spool/goalqueue"}

    # views.py
    from django.db import transaction
    from goalqueue.integrations.django import track_goal_from_request

    @transaction.atomic
    def signup(request):
        user = User.objects.create_user(...)
        track_goal_from_request(request, "signup", metadata={"plan": plan})
        ...

The app (see :mod:`~goalqueue.integrations.django.apps`) reads the ``GOALQUEUE`` dict (keys are the
variables without ``GOALQUEUE_``; they win over the environment) and checks the settings at
start: ``manage.py check`` and ``runserver`` report a bad value as the system check
``goalqueue.E001``; a server (gunicorn, uvicorn) refuses to start.

The goal is validated at once, so a bad goal raises in the view, but enqueued only by
:func:`django.db.transaction.on_commit`: a signup that rolls back sends no goal. Outside a
transaction (autocommit), ``on_commit`` runs the enqueue immediately. The enqueue takes the
queue's one path: with ``GOALQUEUE_SPOOL_DIR`` set, a goal Redis cannot take in time is spooled
and re-sent, so a committed signup never loses its goal. Without a spool, an
:class:`~goalqueue.EnqueueError` after the commit cannot undo the committed work: it is logged,
with the goal's JSON, for a manual replay (``goalqueue.W001`` warns about that at start). The
call is synchronous (Django's ORM and ``on_commit`` are too): from an ``async def`` view, wrap it
in ``asgiref.sync.sync_to_async``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from django.db import transaction
from django.http import HttpRequest

from goalqueue.errors import EnqueueError
from goalqueue.event import GoalEvent
from goalqueue.producer import GoalQueue, default_queue
from goalqueue.web import event_for_request

__all__ = ["track_goal_from_request"]

logger = logging.getLogger(__name__)


def track_goal_from_request(
    request: HttpRequest,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    event_id: str | None = None,
    queue: GoalQueue | None = None,
    using: str | None = None,
) -> str | None:
    """Validate a goal for ``request``'s visitor now; enqueue it when the transaction commits.

    Returns the event id the goal will carry once enqueued, or ``None`` (and schedules nothing)
    when the request has no usable ``datafast_visitor_id`` cookie. If the transaction rolls back
    the goal is dropped and the id is never used. ``using`` is the database alias whose
    transaction to wait for; ``queue`` defaults to the process-wide one.

    Raises :class:`~goalqueue.InvalidGoal` at call time for a bad goal, with or without the
    cookie.
    """
    event = event_for_request(
        request.COOKIES, name, metadata=metadata, description=description, event_id=event_id
    )
    if event is None:
        return None
    transaction.on_commit(
        lambda: _enqueue(queue or default_queue(), event, event_id is None), using=using
    )
    return event.event_id


def _enqueue(queue: GoalQueue, event: GoalEvent, new_id: bool) -> None:
    try:
        queue.enqueue([event], new_ids=new_id)
    except EnqueueError as exc:
        logger.error("goal %s not kept after commit (%s): %s", event.event_id, exc, event.to_json())
