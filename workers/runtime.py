"""A worker process's delivery state: its engine, its events thread and a blocking client,
made when the process first needs them and closed when it stops."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

import redis

from goalqueue import connections
from goalqueue.config import Settings
from workers.engine import Engine
from workers.events import Announcer
from workers.outage import Outage


class Runtime:
    """The per-process state of one app; a forked pool process makes its own."""

    def __init__(self, settings: Settings, dispatcher: Callable[[str | None], Any] | None) -> None:
        self.settings = settings
        self.hostname: str | None = None
        self.outage = Outage(settings.outage_reminder_seconds)
        self._dispatcher = dispatcher
        self._lock = threading.Lock()
        self._pid = 0
        self._engine: Engine | None = None
        self._announcer: Announcer | None = None
        self._redis: redis.Redis | None = None

    def engine(self) -> Engine:
        """This process's engine, started on first use.

        Everything loaded by then (Celery, kombu, the app) is moved out of the garbage
        collector's sight: with hundreds of requests in flight the collector runs often, and
        walking Celery's objects each time cost a tenth of a worker's CPU.
        """
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                gc.freeze()
                self._start()
            assert self._engine is not None
            return self._engine

    @property
    def redis(self) -> redis.Redis:
        """A blocking client for this process's odd jobs (dead-lettering poison messages)."""
        with self._lock:
            if self._redis is None or self._pid != os.getpid():
                self._redis = connections.client(self.settings)
            return self._redis

    def stop_waiting(self) -> None:
        """A shutdown has begun: claim nothing more, hold goals rather than wait for the pace."""
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.stop_waiting()

    def close(self) -> None:
        """Finish and record every goal in flight, then close everything."""
        with self._lock:
            if self._pid == os.getpid():
                for closing in (self._engine, self._announcer, self._redis):
                    if closing is not None:
                        closing.close()
                self.outage.close()
            self._engine = self._announcer = self._redis = None

    def _start(self) -> None:
        announce = None
        if self._dispatcher is not None:
            make = self._dispatcher
            self._announcer = Announcer(lambda: make(self.hostname))
            announce = self._announcer.announce
        self._engine = Engine(self.settings, announce=announce, outage=self.outage)
        self._pid = os.getpid()
