"""The consumer watchdog: a thread in every worker process that notices when the process has
stopped taking goals it could take, and ends the process for its supervisor to start afresh.

A Celery worker can stay alive and connected and yet no longer read its queue after broker
reconnections (celery/celery #8030, #8091, #10302: still reported on Celery 5.6): nothing is
logged, the process answers ``inspect ping``, and its share of the goals waits for the others.
goalqueue's transport has survived every such case tried here (a Redis frozen 40 s, its
connections killed, a restart); this makes it a guarantee rather than luck.

Every ``min(1 s, GOALQUEUE_CONSUMER_STALL_SECONDS / 10)`` the watchdog reads the queue's length
(one LLEN). The process has stalled when, for ``GOALQUEUE_CONSUMER_STALL_SECONDS`` on end, at
every check

* goals were queued (the queue's length above 0),
* Redis answered: this LLEN, promptly (a check that comes late, behind a frozen Redis or a
  suspended process, starts the count again), and no outage under way in the process
  (:mod:`workers.outage`); a consumer waiting to reconnect resumes within
  ``GOALQUEUE_RECONNECT_MAX_SECONDS``, which the setting must exceed,
* the process had room: Celery's consumer held fewer task messages than its prefetch limit (a
  process whose task threads all wait, on a slow DataFast or on the shared pace, takes nothing
  by design), and no shutdown had begun, and
* no task message reached the consumer (:attr:`Consumption.received`, a timestamp the consumer
  sets per message: the only cost on the path of a goal).

Then it logs one line, counts the stall in ``<ns>:metrics`` (``consumer_stalls``, exported as
``goalqueue_consumer_stalls_total``) and ends the process the way a SIGTERM would, but with exit
status 1: it claims nothing more, the goals in flight are delivered and recorded, and Celery
exits. ``goalqueue worker`` starts the process again (:mod:`workers.node`), as docker's restart
policy does a plain ``celery -A workers worker``. A fresh process rather than a restarted
consumer: Celery's consumer restarts only on its own thread, a restart keeps the state that
stalled it (a queue cancelled by ``celery control cancel_consumer`` stays cancelled), and a
stalled main loop might not run it at all. Should the process still run
``GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS`` later, it exits at once with status 70 (the reconciler
re-queues what it held, as after a crash).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis
from celery.worker import state as celery_state

from goalqueue.config import Settings
from goalqueue.tally import CONSUMER_STALLS
from workers.outage import Outage

logger = logging.getLogger(__name__)

EXIT_STALLED = 1  # the warm shutdown's exit status
EXIT_STUCK = 70  # the status when even that did not end the process (EX_SOFTWARE)


class Consumption(Protocol):
    """What the watchdog reads of Celery's consumer (:class:`workers.consumer.Consumer`)."""

    received: float  # time.monotonic() when the last task message reached it

    def has_room(self) -> bool:
        """Whether it may take another task message (it holds fewer than its prefetch limit)."""
        ...


@dataclass(frozen=True)
class Stall:
    """A stall found: goals queued at the last check, seconds without a take."""

    queued: int
    idle: float


class Judge:
    """Decides from successive checks whether the process has stalled; pure, on ``clock``."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self.interval = min(1.0, stall_seconds / 10)
        self._clock = clock
        self._since: float | None = None  # when the checks began finding that it could take
        self._last = clock()

    def check(self, queued: int | None, room: bool, received: float) -> Stall | None:
        """One check: ``queued`` goals (None: Redis did not answer), whether the process had
        room, and when it last received a task message. A stall, once long enough."""
        now = self._clock()
        late, self._last = now - self._last > 2 * self.interval + 1, now
        if not queued or not room or late:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        idle = now - max(self._since, received)
        return Stall(queued, idle) if idle >= self.stall_seconds else None


class Watchdog:
    """Watches a Celery consumer from :meth:`start` to :meth:`stop`, on a thread of its own.

    ``exit`` ends the process at once, should the warm shutdown not (tests pass their own).
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        outage: Outage,
        *,
        clock: Callable[[], float] = time.monotonic,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.keys = settings.keys
        self.outage = outage
        self.judge = Judge(settings.consumer_stall_seconds, clock)
        self._exit = exit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stopping = False  # a shutdown has begun: nothing more to watch

    def start(self, consumer: Consumption, shut_down: Callable[[], None]) -> None:
        """Watch ``consumer``; on a stall, call ``shut_down`` (claim nothing more) and have
        Celery shut down warm with :data:`EXIT_STALLED`."""
        self._thread = threading.Thread(
            target=self._run, args=(consumer, shut_down), name="goalqueue-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self, consumer: Consumption) -> Stall | None:
        """One check (one LLEN)."""
        try:
            queued: int | None = None if self.outage.ongoing else self.redis.llen(self.keys.queue)
        except redis.RedisError:
            queued = None
        room = consumer.has_room() and not self.stopping
        return self.judge.check(queued, room, consumer.received)

    def _run(self, consumer: Consumption, shut_down: Callable[[], None]) -> None:
        stall = None
        while stall is None and not self._stop.wait(self.judge.interval) and not self.stopping:
            stall = self.check(consumer)
        if stall is None:
            return
        self._stalled(stall, shut_down)
        grace = self.settings.visibility_timeout_seconds
        if not self._stop.wait(grace):
            logger.error(
                "still running %g s after its consumer stalled: exiting at once with status %d "
                "(the reconciler re-queues the goals it held)",
                grace,
                EXIT_STUCK,
            )
            self._exit(EXIT_STUCK)

    def _stalled(self, stall: Stall, shut_down: Callable[[], None]) -> None:
        logger.error(
            "consumer stalled: no task message in %.1f s while %d goals were queued, Redis "
            "answered and this process had room (GOALQUEUE_CONSUMER_STALL_SECONDS=%g): shutting "
            "down with status %d once the goals in flight are recorded, for its supervisor to "
            "start it again",
            stall.idle,
            stall.queued,
            self.settings.consumer_stall_seconds,
            EXIT_STALLED,
        )
        try:
            self.redis.hincrby(self.keys.metrics, CONSUMER_STALLS, 1)
        except redis.RedisError as exc:
            logger.warning("the consumer stall was not counted: %s", exc)
        shut_down()
        celery_state.should_stop = EXIT_STALLED
