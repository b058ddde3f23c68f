"""A producer's use of the spool: keep what Redis refused, warn, re-send in the background."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence

from goalqueue.errors import EnqueueError, NotEnqueued
from goalqueue.event import GoalEvent
from goalqueue.spool.forks import start_over_after_fork
from goalqueue.spool.store import PayloadQueue, Spool

logger = logging.getLogger(__name__)

# How often a producer wakes its flusher to look for goals another (maybe dead) process left.
CHECK_SECONDS = 30.0
# At most one "spooling" and one "still cannot re-send" warning per process in this time.
WARN_SECONDS = 60.0
# The flusher's waits between attempts while Redis stays unreachable: doubling up to the cap.
FIRST_RETRY_SECONDS = 0.25
MAX_RETRY_SECONDS = 5.0


class Backlog:
    """One producer's use of the spool: keep what Redis refused, warn, re-send in the background.

    ``redis_down`` is the flag the hot path reads. It is set when a goal had to be spooled and
    cleared when the flusher got through to Redis; while it is set, goals go straight to the
    spool instead of each waiting out the enqueue timeout again. The flusher is a daemon thread,
    started when something is spooled (or every ``CHECK_SECONDS`` after a successful enqueue, to
    pick up goals another process left) and ending when the spool is empty.
    """

    _lock: threading.Lock
    _again: threading.Event
    _stop: threading.Event
    _thread: threading.Thread | None
    _unreported: int
    _next_spool_warning: float
    _next_stuck_warning: float

    def __init__(self, spool: Spool, queue: PayloadQueue) -> None:
        self.spool = spool
        self.queue = queue
        self.redis_down = False
        self._next_check = 0.0
        self._reset_threads()
        start_over_after_fork(self)

    def keep(self, events: Sequence[GoalEvent], cause: EnqueueError | None = None) -> None:
        """Spool ``events`` (Redis failed with ``cause``, or is known to be down); never drops.

        Raises :class:`EnqueueError` (the kind of ``cause``, with its confirmed ids) if the
        spool cannot keep them either.
        """
        self.redis_down = True  # the process's other calls go straight to the spool from now
        try:
            self.spool.add(events)
        except (OSError, sqlite3.Error) as exc:
            raise _unkept(events, cause, self.spool, exc) from exc
        self._warn_spooled(len(events), cause)
        self.wake()

    def keep_unconfirmed(self, events: Sequence[GoalEvent], cause: EnqueueError) -> None:
        """Spool those of ``events`` that Redis did not confirm in the call that failed with
        ``cause`` (those that may be in Redis too: enqueued again, they are found known)."""
        unconfirmed = set(cause.unconfirmed)
        self.keep([event for event in events if event.event_id in unconfirmed], cause)

    def sent(self) -> None:
        """Called after each successful enqueue: a clock read, and rarely a thread start."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_SECONDS
            self.wake()

    def wake(self) -> None:
        """Make sure the flusher runs (again) soon."""
        with self._lock:
            self._again.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="goalqueue-spool-flusher", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the flusher and give up this process's spool file (what waits there stays)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.spool.close()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._again.clear()
            try:
                count = self.spool.flush(self.queue, progress=self._got_through)
            except Exception as exc:  # the thread must outlive any error: goals are waiting
                if not isinstance(exc, EnqueueError):
                    self.redis_down = False  # the spool is the trouble: new goals go to Redis
                failures += 1
                self._warn_stuck(exc)
                self._stop.wait(min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (failures - 1)))
                continue
            failures = 0
            self.redis_down = False
            if count:
                logger.info("re-sent %d spooled goal(s) to Redis", count)
            with self._lock:
                if not self._again.is_set():
                    self._thread = None
                    return

    def _got_through(self, count: int) -> None:
        self.redis_down = False

    def _warn_spooled(self, count: int, cause: EnqueueError | None) -> None:
        with self._lock:
            self._unreported += count
            now = time.monotonic()
            if now < self._next_spool_warning:
                return
            self._next_spool_warning = now + WARN_SECONDS
            count, self._unreported = self._unreported, 0
        logger.warning(
            "%s; spooled %d goal(s) in %s since the last warning, to be re-sent once Redis answers",
            cause or "Redis is unreachable",
            count,
            self.spool.directory,
        )

    def _warn_stuck(self, exc: Exception) -> None:
        now = time.monotonic()
        if now < self._next_stuck_warning:
            return
        self._next_stuck_warning = now + WARN_SECONDS
        if isinstance(exc, EnqueueError):
            logger.warning("cannot re-send the spool at %s yet: %s", self.spool.directory, exc)
        else:
            logger.exception("re-sending the spool at %s failed", self.spool.directory)

    def after_fork(self) -> None:
        self._reset_threads()
        self._next_check = 0.0  # look at the spool on the child's first goal

    def _reset_threads(self) -> None:
        """Fresh thread state: at start, and in a forked child, where the flusher does not run
        and a lock held at fork time would stay held."""
        self._lock = threading.Lock()
        self._again = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._unreported = 0
        self._next_spool_warning = 0.0
        self._next_stuck_warning = 0.0


def _unkept(
    events: Sequence[GoalEvent], cause: EnqueueError | None, spool: Spool, exc: Exception
) -> EnqueueError:
    """The error for goals that neither Redis nor the spool could keep."""
    why = cause or "Redis was unreachable moments ago"
    kind = type(cause) if cause is not None else NotEnqueued
    ids = [event.event_id for event in events]
    return kind(
        f"{why}; the spool at {spool.directory} could not keep the {len(events)} goal(s) "
        f"either ({type(exc).__name__}: {exc}); nothing was kept",
        cause.event_ids if cause is not None else ids,
        cause.enqueued if cause is not None else [],
    )
