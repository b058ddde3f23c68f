"""A Redis outage in a worker's log: one line when it starts, a reminder at most every
``GOALQUEUE_OUTAGE_REMINDER_SECONDS`` (60) with its length, one line when it ends (or when the
process stops during it).

While Redis is down a worker process keeps trying it: the sweeper every round, each outcome
write every quarter second. Logging every failed attempt flooded the log (1,449 lines in 12
minutes from one node). Instead each part of the process reports its failures and successes
to the process's one :class:`Outage`, which decides what is worth a line. Celery's consumer
logs its own reconnect attempts, on kombu's back-off (see ``GOALQUEUE_RECONNECT_MAX_SECONDS``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Outage:
    """Whether this process can reach Redis, as its sweeper, recorder and others find out.

    Thread-safe: the sweeper's thread and the event loop's report to the same one.
    """

    def __init__(
        self, reminder_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reminder_seconds = reminder_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._reminded = 0.0
        self._failures = 0
        self._unrecorded = 0

    def failed(self, doing: str, exc: Exception) -> None:
        """``doing`` could not reach Redis (``exc``): a line if an outage starts, or a reminder
        is due."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            if self._since is None:
                self._since = self._reminded = now
                logger.warning(
                    "Redis unreachable (%s: %s): retrying; a reminder every %g s until it is back",
                    doing,
                    exc,
                    self.reminder_seconds,
                )
            elif now - self._reminded >= self.reminder_seconds:
                self._reminded = now
                logger.warning(
                    "Redis unreachable for %.0f s (%s; the last, %s: %s)",
                    now - self._since,
                    self._tally(),
                    doing,
                    exc,
                )

    def unrecorded(self, exc: Exception) -> None:
        """A goal's outcome could not be recorded in time: counted in the outage's next line
        (a line of its own if no outage is under way)."""
        with self._lock:
            if self._since is not None:
                self._unrecorded += 1
                return
        logger.error("a goal's outcome was not recorded (the reconciler re-queues it): %s", exc)

    @property
    def ongoing(self) -> bool:
        """Whether an outage is under way: a failure reported, and no success since."""
        return self._since is not None

    def succeeded(self) -> None:
        """Redis answered: a line if that ends an outage."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            if (since := self._since) is not None:
                self._last_line("Redis reachable again after %.0f s unreachable (%s)", since)
                self._since, self._failures, self._unrecorded = None, 0, 0

    def close(self) -> None:
        """The process is stopping: a last line for an outage still under way."""
        with self._lock:
            if (since := self._since) is not None:
                self._last_line("Redis still unreachable at shutdown, after %.0f s (%s)", since)

    def _last_line(self, message: str, since: float) -> None:
        logger.warning(message, self._clock() - since, self._tally())

    def _tally(self) -> str:
        tally = f"{self._failures} failed attempts"
        if self._unrecorded:
            tally += (
                f"; {self._unrecorded} goals' outcomes not recorded, to be sent again once the "
                "reconciler re-queues them"
            )
        return tally
