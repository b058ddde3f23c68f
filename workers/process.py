"""One worker process: every thread it runs, and how they talk, started and stopped in one place.

A worker process (``celery -A workers worker``; ``goalqueue worker`` runs one per core) is::

    main thread     Celery: kombu's consumer (BRPOP on the queue, unacked bookkeeping, acks),
    │               its timers and control commands
    │ a task message ──► the pool's task thread (Celery's "threads" pool, one thread)
    │                      │ Engine.run(event id, seq): run_coroutine_threadsafe, then wait
    │                      ▼
    loop thread     Engine: the asyncio loop. TAKE the task's goal and claim more (and claim
    │               again, alone, as room frees up), POST each (httpx on aiohttp), decide,
    │               SETTLE (redis.asyncio); the task's own outcome goes back through its future
    │ each claimed goal, once recorded ──► SimpleQueue.put (never blocks the loop)
    ▼
    events thread   Announcer: the claimed goals' task events, a group every 0.5 s at most
    sweeper thread  Sweeper: SWEEP due goals and RECONCILE lost ones every
                    GOALQUEUE_SWEEP_INTERVAL_SECONDS, on a blocking client of its own
    watchdog thread Watchdog: LLEN of the queue every second at most; goals queued, Redis
                    answering, room for a task message and none received for
                    GOALQUEUE_CONSUMER_STALL_SECONDS: one line, a count, and a warm shutdown
                    with exit status 1 (the consumer bumps its ``received`` per message)

:class:`WorkerProcess` owns all of them, and the blocking client the consumer dead-letters
poison with. Nothing runs until :meth:`~WorkerProcess.start`. Celery drives it (see
:mod:`workers.app`): the ``Lifecycle`` bootstep starts it once the pool exists,
``worker_shutting_down`` tells it to claim nothing more, and ``worker_shutdown``, once the pool
has finished its task, stops it: every goal in flight is recorded, then each thread ends.
The watchdog ends the process the same way when its consumer has stalled.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import redis

from goalqueue import connections
from goalqueue.config import Settings
from workers.engine import Engine
from workers.events import Announcer
from workers.outage import Outage
from workers.sweeper import Sweeper
from workers.watchdog import Consumption, Watchdog


class WorkerProcess:
    """Everything one worker process owns. ``make_dispatcher(hostname)`` makes the task-event
    dispatcher the events thread sends on."""

    def __init__(self, settings: Settings, make_dispatcher: Callable[[str | None], Any]) -> None:
        self.settings = settings
        self.hostname: str | None = None
        self.outage = Outage(settings.outage_reminder_seconds)
        self.redis: redis.Redis = connections.client(settings)
        self.announcer = Announcer(lambda: make_dispatcher(self.hostname))
        self.engine = Engine(settings, announce=self.announcer.announce, outage=self.outage)
        self.sweeper = Sweeper(settings, connections.client(settings), self.outage)
        self.watchdog = Watchdog(settings, self.redis, self.outage)
        self._started = False

    def start(self, hostname: str | None, consumer: Consumption) -> None:
        """Start every thread, the loop's last (a task may come as soon as it is up); the
        watchdog watches ``consumer``.

        Everything loaded by then (Celery, kombu, the app) is moved out of the garbage
        collector's sight first: with hundreds of requests in flight the collector runs often,
        and walking Celery's objects each time cost a tenth of a worker's CPU.
        """
        self.hostname = hostname
        gc.freeze()
        self.announcer.start()
        self.sweeper.start()
        self.engine.start()
        self.watchdog.start(consumer, self.stop_waiting)
        self._started = True

    def stop_waiting(self) -> None:
        """A shutdown has begun: claim nothing more (safe from a signal handler's thread)."""
        if self._started:
            self.watchdog.stopping = True
            self.engine.stop_waiting()

    def stop(self) -> None:
        """Record every goal in flight, then end each thread and close the clients."""
        if self._started:
            self._started = False
            self.sweeper.stop()
            self.engine.close()
            self.announcer.close()
            self.watchdog.stop()
            self.outage.close()
        self.redis.close()
