"""The delivery task, ``goalqueue.deliver``. Its message is written by :mod:`goalqueue.message`,
not ``apply_async``; :func:`workers.app.create_app` registers it."""

from __future__ import annotations

from typing import Any

from celery import Task

from goalqueue.event import dumps
from goalqueue.message import MAX_SEQUENCE, is_sequence
from workers.transport import bury


def deliver(task: Task, *args: Any, **kwargs: Any) -> str:
    """Deliver the goal ``seq`` whose event id is the task id; any other arguments go to the
    dead letters (TAKE checks that the sequence was handed out)."""
    process = task.app.process
    match args:
        case (seq,) if is_sequence(seq) and not kwargs and isinstance(task.request.id, str):
            return str(process.engine.run(task.request.id, seq).summary)
    poison = dumps({"id": repr(task.request.id), "args": repr(args), "kwargs": repr(kwargs)})
    error = f"task arguments must be (seq,), seq a whole number from 1 to {MAX_SEQUENCE}"
    bury(process.redis, process.settings.keys, poison, error)
    return "poison"
