"""Flask: track a goal for the visitor behind the current request.

    from goalqueue.integrations import flask as goalqueue_flask

    app = Flask(__name__)
    goalqueue_flask.init_app(app)  # checks the settings now: a bad one stops the app here

    @app.post("/signup")
    def signup():
        ...
        goalqueue_flask.track_goal_from_request("signup", metadata={"plan": plan})

``init_app`` reads ``GOALQUEUE_*`` keys of ``app.config`` (over the environment's variables of the
same names), makes the process-wide queue and fails with :class:`~goalqueue.ConfigError` (the
same one line ``goalqueue`` commands print) when a setting is bad. With ``GOALQUEUE_SPOOL_DIR``
set, a goal Redis cannot take in time is spooled and re-sent, as for ``track_goal``.
"""

from __future__ import annotations

from collections.abc import Mapping

import flask

from goalqueue.config import Settings
from goalqueue.producer import GoalQueue, default_queue, set_default_queue
from goalqueue.web import event_for_request

__all__ = ["init_app", "track_goal_from_request"]

CONFIG_PREFIX = "GOALQUEUE_"


def init_app(app: flask.Flask, queue: GoalQueue | None = None) -> GoalQueue:
    """Make (or take) the process-wide queue for ``app``, from ``app.config``'s ``GOALQUEUE_*``
    keys over the environment; raises :class:`~goalqueue.ConfigError` for a bad setting."""
    if queue is None:
        config = app.config.items()
        overrides = {key: value for key, value in config if key.startswith(CONFIG_PREFIX)}
        queue = GoalQueue(settings=Settings.from_env(overrides=overrides))
    set_default_queue(queue)
    app.extensions["goalqueue"] = queue
    return queue


def track_goal_from_request(
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    event_id: str | None = None,
    request: flask.Request | None = None,
    queue: GoalQueue | None = None,
) -> str | None:
    """Enqueue a goal for the visitor in ``request``'s ``datafast_visitor_id`` cookie.

    ``request`` defaults to :data:`flask.request`; ``queue`` to the process-wide one (the one
    :func:`init_app` made, else the environment's). Returns the event id, or ``None`` (and
    enqueues nothing) when the request has no usable cookie. Raises
    :class:`~goalqueue.InvalidGoal` for a bad goal, with or without the cookie, and
    :class:`~goalqueue.EnqueueError` when Redis does not confirm it and no spool keeps it.
    """
    cookies = (flask.request if request is None else request).cookies
    event = event_for_request(
        cookies, name, metadata=metadata, description=description, event_id=event_id
    )
    if event is None:
        return None
    (default_queue() if queue is None else queue).enqueue([event], new_ids=event_id is None)
    return event.event_id
