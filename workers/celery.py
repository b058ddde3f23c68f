"""The Celery app that ``celery -A workers worker`` runs, configured for zero loss.

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a goal leaves Redis only after its
  outcome is recorded, and a killed pool process puts its goal back.
* A short ``visibility_timeout``: nothing waits inside the broker (waits live in the waiting
  set), so a dead worker's unacknowledged goals come back within about that long.
* ``worker_prefetch_multiplier = 1``: each worker holds no more task messages than it runs.
* The threads pool, a few threads: each task hands its goal to the process's event loop
  (:mod:`workers.engine`) and waits for its outcome, while the goals its TAKE claims keep the
  loop's ``GOALQUEUE_MAX_IN_FLIGHT`` requests busy. One process uses one core; ``goalqueue
  worker`` starts one per core.
* httpx's per-request INFO line is turned down to WARNING (unless the worker logs at DEBUG):
  Celery already logs each task.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)
from celery.utils.log import mlevel

from goalqueue import keys
from goalqueue.config import Settings, get_settings
from goalqueue.errors import ConfigError
from workers.engine import Engine
from workers.events import Announcer
from workers.sweeper import Sweeper
from workers.transport import harden

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4

try:
    settings = get_settings()
except ConfigError as exc:
    raise SystemExit(f"goalqueue worker cannot start: {exc}") from None

app = Celery("goalqueue", broker=settings.broker_url, include=["workers.tasks"])
app.conf.update(
    task_default_queue=keys.QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    worker_pool="threads",
    worker_concurrency=DEFAULT_CONCURRENCY,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_consumer="workers.consumer:Consumer",
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout_seconds,
        # kombu sweeps for a dead worker's unacked goals every interval x throttle seconds
        # (10 x 10 by default); scan every few seconds instead so recovery stays quick.
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
    },
)


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url, decode_responses=True)


class _Runtime:
    """The per-process delivery state: created at process start, closed at shutdown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._engine: Engine | None = None
        self._announcer: Announcer | None = None
        self._redis: redis.Redis | None = None
        self.hostname: str | None = None

    def engine(self) -> Engine:
        """This process's engine (a forked pool process makes its own).

        Everything loaded by then (Celery, kombu, the app) is moved out of the garbage
        collector's sight: with hundreds of requests in flight the collector runs often, and
        walking Celery's objects each time cost a tenth of a worker's CPU.
        """
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                gc.freeze()
                announcer = None
                if app.conf.worker_send_task_events:
                    announcer = self._announcer = Announcer(self._dispatcher)
                self._engine = Engine(settings, announce=announcer.announce if announcer else None)
                self._redis = redis_client(settings)
                self._pid = os.getpid()
            return self._engine

    @property
    def redis(self) -> redis.Redis:
        """A blocking client for this process's odd jobs (dead-lettering poison messages)."""
        self.engine()
        assert self._redis is not None
        return self._redis

    def stop_waiting(self) -> None:
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.stop_waiting()

    def close(self) -> None:
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.close()
                if self._announcer is not None:
                    self._announcer.close()
                if self._redis is not None:
                    self._redis.close()
            self._engine = self._announcer = self._redis = None

    def _dispatcher(self) -> Any:
        """A task-event dispatcher on the hardened transport, for the claimed goals' events."""
        return app.events.Dispatcher(harden(app.connection_for_write()), hostname=self.hostname)


runtime = _Runtime()


@worker_init.connect
def _check_before_start(sender: Any = None, **_: Any) -> None:
    """Refuse to start without usable credentials; warn about a Redis that may evict goals."""
    try:
        settings.require_credentials()
    except ConfigError as exc:
        raise SystemExit(f"goalqueue worker cannot start: {exc}") from None
    runtime.hostname = getattr(sender, "hostname", None)
    if mlevel(getattr(sender, "loglevel", logging.INFO)) > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if settings.allow_insecure_api_url:
        logger.warning(
            "GOALQUEUE_ALLOW_INSECURE_API_URL is set: goals and the API key may travel over "
            "plain http to %s",
            settings.api_url,
        )
    warn_if_lossy(redis_client(settings))


def warn_if_lossy(client: redis.Redis) -> None:
    """Warn when Redis may evict keys under memory pressure: evicted goals are lost goals."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        return
    if policy and policy != "noeviction":
        logger.warning(
            "Redis maxmemory-policy is %r: under memory pressure Redis may evict queued goals. "
            "Set maxmemory-policy noeviction.",
            policy,
        )


@worker_process_init.connect
def _start_process(**_: Any) -> None:
    runtime.engine()


@worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    runtime.stop_waiting()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _stop_process(**_: Any) -> None:
    runtime.close()


class SweeperStep(bootsteps.StartStopStep):
    """Runs the sweeper thread alongside the worker's consumer."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.sweeper: Sweeper | None = None

    def start(self, worker: Any) -> None:
        runtime.engine()
        self.sweeper = Sweeper(settings, redis_client(settings))
        self.sweeper.start()

    def stop(self, worker: Any) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()


app.steps["worker"].add(SweeperStep)

__all__ = ["app"]
