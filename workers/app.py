"""The Celery app a worker runs, configured for zero loss: ``create_app(settings)``.

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a goal leaves Redis only after its
  outcome is recorded, and a killed pool process puts its goal back.
* A short ``visibility_timeout``: nothing waits inside the broker (waits live in the waiting
  set), so a dead worker's unacknowledged goals come back within about that long.
* ``worker_prefetch_multiplier = 1``: each worker holds no more task messages than it runs.
* The threads pool, one thread: a task hands its goal to the process's event loop
  (:mod:`workers.engine`) and waits for its outcome, while the goals the loop claims keep its
  ``GOALQUEUE_MAX_IN_FLIGHT`` requests busy (more task threads only added Celery's overhead).
  Another pool is refused at start. One process uses one core; ``goalqueue worker`` starts one
  per core. :mod:`workers.process` draws every thread of a worker process.
* Behind Sentinel (a ``sentinel://`` broker URL) kombu gets the master's name and the
  sentinels' options as transport options; :mod:`workers.transport` hardens its Sentinel
  channel as it does the plain one.
* httpx's per-request INFO line is turned down to WARNING (unless the worker logs at DEBUG):
  Celery already logs each task.
* ``GOALQUEUE_LOG_FORMAT=json`` has Celery's log handlers write one JSON object per line (see
  :mod:`goalqueue.logs`), and leaves out its start banner.

:func:`load_app` is what ``celery -A workers worker`` runs: the app for the settings in the
environment, or, when they are bad, one that refuses to start with a line naming the variable.
"""

from __future__ import annotations

import logging
from typing import Any

import celery.apps.worker
import redis
from celery import Celery, bootsteps
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    worker_init,
    worker_shutdown,
    worker_shutting_down,
)
from celery.utils.log import mlevel

from goalqueue import connections, logs
from goalqueue.config import Settings, get_settings
from goalqueue.errors import ConfigError
from goalqueue.keys import TASK_NAME
from workers.process import WorkerProcess
from workers.sweeper import stall_seconds
from workers.tasks import deliver
from workers.transport import NAMESPACE, STALL, harden

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 1


class GoalqueueApp(Celery):  # type: ignore[misc]
    """A Celery app with the settings it was made with and the worker process it drives."""

    settings: Settings
    process: WorkerProcess


def create_app(settings: Settings) -> GoalqueueApp:
    """The delivery app for ``settings``: the task, and the worker process's lifecycle."""
    app = GoalqueueApp("goalqueue", broker=settings.broker_url, set_as_current=False)
    app.conf.update(_configuration(settings))
    app.settings = settings
    app.process = WorkerProcess(settings, lambda hostname: _dispatcher(app, hostname))
    app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)(deliver)
    app.steps["worker"].add(Lifecycle)
    _connect_signals(app)
    return app


def load_app() -> Celery:
    """The app for the settings in the environment; one that refuses to start if they are bad."""
    try:
        return create_app(get_settings())
    except ConfigError as exc:
        return _refusing_app(f"goalqueue worker cannot start: {exc}")


def _configuration(settings: Settings) -> dict[str, Any]:
    keys = settings.keys
    return {
        "task_default_queue": keys.queue,
        # Task events and control commands of this namespace only (see goalqueue.keys).
        "event_exchange": keys.event_exchange,
        "event_queue_prefix": keys.event_exchange,
        "control_exchange": keys.namespace,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_pool": "threads",
        "worker_concurrency": DEFAULT_CONCURRENCY,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_consumer": "workers.consumer:Consumer",
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_seconds,
            # kombu sweeps for a dead worker's unacked goals every interval x throttle seconds
            # (10 x 10 by default); scan every few seconds instead so recovery stays quick.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            **keys.kombu_transport_options(),
            **_sentinel_options(settings),
            NAMESPACE: keys.namespace,
            STALL: stall_seconds(settings),
        },
    }


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    """kombu's Sentinel transport options: the master's name, and the sentinels' password and
    TLS (kombu reads the master's own from the broker URL)."""
    if settings.sentinel is None:
        return {}
    options: dict[str, Any] = {"master_name": settings.sentinel_master}
    if sentinel_kwargs := connections.sentinel_options(settings):
        options["sentinel_kwargs"] = sentinel_kwargs
    return options


def _dispatcher(app: Celery, hostname: str | None) -> Any:
    """A task-event dispatcher on the hardened transport, for the claimed goals' events."""
    return app.events.Dispatcher(harden(app.connection_for_write()), hostname=hostname)


def _connect_signals(app: GoalqueueApp) -> None:
    """The checks before a worker starts, its log format, and the end of its process's
    lifecycle (see :class:`Lifecycle` for the start), for this app's workers only."""

    def before_start(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            _check_before_start(app, sender)

    def shutting_down(sender: Any = None, **_: Any) -> None:
        if sender == app.process.hostname:
            app.process.stop_waiting()

    def stop(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            app.process.stop()

    def log_format(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is not None:
            logs.use(app.settings.log_format, logger.handlers)

    def json_only(instance: Any = None, **_: Any) -> None:
        """JSON lines alone: no banner; warnings (Celery's at start) logged, in JSON from the
        start (Celery's own handlers take over once it sets its logging up); and the notices
        Celery's signal handlers print (``worker: Warm shutdown``) written as JSON lines."""
        if getattr(instance, "app", None) is app and app.settings.log_format == logs.JSON:
            instance.quiet = True
            logging.captureWarnings(True)
            logs.configure(logs.JSON, logging.WARNING)
            celery.apps.worker.safe_say = logs.say

    uid = f"goalqueue-{id(app)}"
    after_setup_logger.connect(log_format, weak=False, dispatch_uid=uid)
    after_setup_task_logger.connect(log_format, weak=False, dispatch_uid=uid)
    celeryd_init.connect(json_only, weak=False, dispatch_uid=uid)
    worker_init.connect(before_start, weak=False, dispatch_uid=uid)
    worker_shutting_down.connect(shutting_down, weak=False, dispatch_uid=uid)
    worker_shutdown.connect(stop, weak=False, dispatch_uid=uid)


def _check_before_start(app: GoalqueueApp, worker: Any) -> None:
    """Refuse to start without usable credentials; warn about a Redis that may evict goals."""
    settings = app.settings
    try:
        settings.require_credentials()
    except ConfigError as exc:
        raise SystemExit(f"goalqueue worker cannot start: {exc}") from None
    pool = getattr(worker, "pool_cls", None)
    if isinstance(pool, type) and not issubclass(pool, ThreadTaskPool):
        raise SystemExit(
            "goalqueue worker cannot start: it runs Celery's threads pool (--pool threads), "
            f"not {pool.__module__}"
        )
    if mlevel(getattr(worker, "loglevel", logging.INFO)) > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if settings.allow_insecure_api_url:
        logger.warning(
            "GOALQUEUE_ALLOW_INSECURE_API_URL is set: goals and the API key may travel over "
            "plain http to %s",
            settings.api_url,
        )
    _refuse_bad_credentials(app)
    warn_if_lossy(app.process.redis)


def _refuse_bad_credentials(app: GoalqueueApp) -> None:
    """Exit in one line when Redis refuses the URL's credentials: no retry would fix them. (An
    unreachable Redis is left to Celery, which keeps trying to connect.)"""
    try:
        app.process.redis.ping()
    except redis.AuthenticationError as exc:
        reason = connections.explain(exc, app.settings)
        raise SystemExit(f"goalqueue worker cannot start: {reason}") from None
    except redis.RedisError:
        pass


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


def _refusing_app(reason: str) -> Celery:
    """An app whose worker exits at start with ``reason``, in one line."""
    app = Celery("goalqueue", set_as_current=False)

    def refuse(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            raise SystemExit(reason)

    worker_init.connect(refuse, weak=False, dispatch_uid=f"goalqueue-refuse-{id(app)}")
    return app


class Lifecycle(bootsteps.StartStopStep):  # type: ignore[misc]
    """Starts the worker process's threads (:class:`~workers.process.WorkerProcess`) once the
    pool exists. They stop at ``worker_shutdown``, after the pool has finished its task: the
    task waits on the loop for its goal's outcome."""

    requires = ("celery.worker.components:Pool",)

    def start(self, worker: Any) -> None:
        worker.app.process.start(getattr(worker, "hostname", None), worker.consumer)
