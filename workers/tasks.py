"""The delivery task. Its message is written by :mod:`goalqueue.message`, not ``apply_async``."""

from __future__ import annotations

from typing import Any

from celery import Task

from goalqueue import keys
from goalqueue.event import dumps
from workers.celery import app, runtime
from workers.transport import bury


@app.task(
    name=keys.TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def deliver(task: Task, *args: Any, **kwargs: Any) -> str:
    """Deliver the goal ``seq`` whose event id is the task id; any other arguments go to the
    dead letters."""
    match args:
        case (int() as seq,) if not kwargs and isinstance(task.request.id, str):
            return runtime.engine().deliver(task.request.id, seq).result
    bury(dumps({"args": repr(args), "kwargs": repr(kwargs)}), "task arguments must be (seq,)")
    return "poison"
