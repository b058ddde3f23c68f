"""Group commit for threads: those that spool at the same time share one transaction and one
fsync.

Not the workers' :class:`~workers.recording.Recorder`, which also groups writes: that one runs on
an event loop, lets several writes be under way at once and merges only what waits for one; this
one serves threads, and one write at a time is all SQLite's single writer allows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Row = TypeVar("Row")


class GroupCommit(Generic[Row]):
    """Group commit: threads that spool at the same time share one transaction and one fsync.

    A thread queues its rows and, unless a write is under way, writes everything queued; else it
    waits for the write that takes its rows. No thread queues for a lock that others may grab
    first, so a burst cannot starve one of them, and it costs one fsync per write, not per goal.
    """

    def __init__(self, write: Callable[[list[Row]], None], timeout: float) -> None:
        self._write = write
        self._timeout = timeout
        self._changed = threading.Condition()
        self._queued: list[_Ticket[Row]] = []
        self._writing = False

    def submit(self, rows: list[Row]) -> None:
        ticket = _Ticket(rows)
        with self._changed:
            self._queued.append(ticket)
            self._wait_turn(ticket)
            if ticket.done:
                if ticket.error is not None:
                    raise OSError(f"the spool write for these goals failed: {ticket.error}")
                return
            self._writing = True
            batch, self._queued = self._queued, []
        error: BaseException | None = None
        try:
            self._write([row for queued in batch for row in queued.rows])
        except BaseException as exc:
            error = exc
            raise
        finally:
            with self._changed:
                for queued in batch:
                    queued.done, queued.error = True, error
                self._writing = False
                self._changed.notify_all()

    def _wait_turn(self, ticket: _Ticket[Row]) -> None:
        """Until this ticket was written by another thread, or no write is under way. A ticket
        not yet taken is withdrawn after the timeout; one being written waits for that write."""
        deadline = time.monotonic() + self._timeout
        while self._writing and not ticket.done:
            left = deadline - time.monotonic()
            if left <= 0 and ticket in self._queued:
                self._queued.remove(ticket)
                raise TimeoutError(f"the spool was busy for {self._timeout:g} s")
            self._changed.wait(max(left, 0.01))


class _Ticket(Generic[Row]):
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None
