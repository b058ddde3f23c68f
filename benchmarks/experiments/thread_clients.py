"""goalqueue's worker with one single-connection httpx client per pool thread.

httpcore's shared connection pool does O(connections x queued requests) work per request
(encode/httpcore#1035), so one client shared by 32 threads costs more CPU per goal than 32
small clients. ``BENCH_LEAN=1`` also applies :mod:`benchmarks.experiments.lean`.
"""

import os
import threading

import httpx

from goalqueue.event import GoalEvent
from workers import delivery
from workers.celery import app, settings
from workers.client import build_client, post_goal

if os.environ.get("BENCH_LEAN"):
    from benchmarks.experiments import lean  # noqa: F401

_local = threading.local()


def _post_with_thread_client(
    client: httpx.Client, url: str, event: GoalEvent
) -> httpx.Response | httpx.HTTPError:
    own: httpx.Client | None = getattr(_local, "client", None)
    if own is None:
        own = _local.client = build_client(settings, 1)
    return post_goal(own, url, event)


delivery.post_goal = _post_with_thread_client  # type: ignore[assignment]

__all__ = ["app"]
