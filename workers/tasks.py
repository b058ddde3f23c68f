"""The delivery task, ``goalqueue.deliver``. Its message is written by :mod:`goalqueue.message`,
not ``apply_async``; :func:`workers.app.create_app` registers it."""

from __future__ import annotations

from typing import Any

from celery import Task

from goalqueue.event import dumps
from workers.transport import bury


def deliver(task: Task, *args: Any, **kwargs: Any) -> str:
    """Deliver the goal ``seq`` whose event id is the task id; any other arguments go to the
    dead letters."""
    runtime = task.app.runtime
    match args:
        case (int() as seq,) if not kwargs and isinstance(task.request.id, str):
            return str(runtime.engine().deliver(task.request.id, seq).summary)
    poison = dumps({"args": repr(args), "kwargs": repr(kwargs)})
    bury(runtime.redis, runtime.settings.keys, poison, "task arguments must be (seq,)")
    return "poison"
