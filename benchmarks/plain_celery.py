"""The baseline: the plain Celery + httpx task a user would write instead of goalqueue.

Idiomatic and honest: late acks, automatic retries with exponential backoff on any httpx error
(``raise_for_status`` turns 4xx/5xx into one), one module-level keep-alive client, and
Celery's defaults for everything else. The benchmark runs it as

    celery -A benchmarks.plain_celery worker --pool threads -c 100
    celery -A benchmarks.plain_celery worker                      (prefork, one child per core)
    celery -A benchmarks.plain_celery worker --pool threads -c 8

with ``BENCH_BROKER_URL`` and ``BENCH_API_URL`` in the environment.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from celery import Celery, Task

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/11")
API_URL = os.environ.get("BENCH_API_URL", "http://127.0.0.1:8765/api/v1/goals")
API_KEY = os.environ.get("BENCH_API_KEY", "df_sandbox")

app = Celery("plain", broker=BROKER_URL)
app.conf.update(task_acks_late=True, task_ignore_result=True)

client = httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10.0)


@app.task(  # type: ignore[untyped-decorator]  # Celery's decorator is not annotated
    bind=True,
    name="plain.deliver_goal",
    autoretry_for=(httpx.HTTPError,),
    retry_backoff=True,
    acks_late=True,
)
def deliver_goal(self: Task, goal: dict[str, Any]) -> None:
    """POST one goal to DataFast; the task id doubles as the idempotency key."""
    response = client.post(API_URL, json=goal, headers={"Idempotency-Key": self.request.id})
    response.raise_for_status()
