"""The local spool: goals Redis could not take, kept on disk until Redis answers again.

With ``GOALQUEUE_SPOOL_DIR`` set, a goal that cannot reach Redis within the enqueue timeout is
written here, with the event id it already has, and ``track_goal`` still returns that id. A
:class:`Backlog` in each producer process re-sends the spool from a daemon thread once Redis
answers; ``goalqueue spool flush`` does it by hand.

Why SQLite (WAL mode, ``synchronous=FULL``) and not fsynced append-only files:

* a batch of goals is spooled in one transaction, all or nothing, and a process killed in the
  middle of a write leaves no torn record: SQLite's WAL checksums discard an unfinished commit;
* with ``synchronous=FULL`` every commit fsyncs the WAL before ``add`` returns, so an id that
  ``track_goal`` returned survives a crash of the process and of the machine;
* many threads and many forked web workers can write to one directory at once: SQLite's own
  locking orders the writers, and in WAL mode readers (``status``, the flusher) never block
  them. Append-only files would need their own locking, torn-record detection, and a way to
  forget the re-sent head of a file (offsets, rotation, compaction);
* re-sent goals are deleted by primary key in a short transaction, and the file stays small;
* it is in the standard library.

The cost is one fsync per spooling call (about what an fsynced file would cost), and the
directory must be on a local file system: WAL's shared memory and the ``flock`` that orders
flushers do not work over NFS.

Every operation opens its own short-lived connection, so a ``Spool`` holds no file handle: it is
safe to share between threads and to carry across ``fork``.

Re-sending is at least once. A batch is deleted only after Redis took it, so a crash in between
sends it again, and so does a goal whose enqueue timed out although a busy Redis ran it late.
The payload is re-sent byte for byte, which lets the Redis side absorb most of these copies: the
ledger is a set of payloads, so a copy of a goal still waiting on the queue re-scores its ledger
entry and the older message finds it ``gone``; a copy of a delivered goal finds the delivered
marker and is settled without a request. Only a copy that arrives while the first one is being
POSTed, or after the delivered marker expired, is sent twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from goalqueue.errors import EnqueueError
from goalqueue.event import GoalEvent

logger = logging.getLogger(__name__)

DATABASE = "goals.sqlite3"
FLUSH_LOCK = "flush.lock"
BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS goals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    spooled_at REAL NOT NULL
)
"""


class Sender(Protocol):
    """Whatever puts stored goals on the Redis queue (a :class:`~goalqueue.GoalQueue`)."""

    def enqueue_payloads(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Enqueue ``(event id, event JSON)`` pairs, or raise :class:`EnqueueError`."""


class Spool:
    """A directory holding goals that wait for Redis, oldest first."""

    def __init__(self, directory: str | os.PathLike[str], *, lock_timeout: float = 5.0) -> None:
        """Open the spool in ``directory``, creating both if needed.

        ``lock_timeout`` bounds how long a call waits for another process's write to finish.
        """
        self.directory = Path(directory)
        self.lock_timeout = lock_timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")  # stored in the file: set once, kept for good
            db.execute(_SCHEMA)

    def add(self, events: Sequence[GoalEvent]) -> None:
        """Keep ``events`` durably (fsynced) before returning, all of them or none."""
        now = time.time()
        rows = [(event.event_id, event.to_json(), now) for event in events]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO goals (event_id, payload, spooled_at) VALUES (?, ?, ?)", rows
            )
            db.execute("COMMIT")

    def pending(self) -> int:
        """How many goals wait in the spool."""
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM goals").fetchone()[0])

    def oldest(self) -> float | None:
        """When the oldest waiting goal was spooled (unix time), or ``None`` if none waits."""
        with self._db() as db:
            row = db.execute("SELECT spooled_at FROM goals ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def flush(
        self,
        sender: Sender,
        batch: int = BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Re-send the waiting goals oldest first, ``batch`` at a time; returns how many.

        A batch is deleted only after Redis took it. One batch is in flight at a time across all
        threads and processes on this directory, so two flushers never send the same goals.
        ``progress`` is called with the size of each batch re-sent. Raises
        :class:`EnqueueError` when Redis does not take a batch; what was not sent stays.
        """
        sent = 0
        while True:
            with self._flush_lock():
                rows = self._head(batch)
                if not rows:
                    return sent
                sender.enqueue_payloads([(event_id, payload) for _, event_id, payload in rows])
                self._forget(rows[0][0], rows[-1][0])
            sent += len(rows)
            if progress is not None:
                progress(len(rows))

    def _head(self, batch: int) -> list[tuple[int, str, str]]:
        with self._db() as db:
            query = "SELECT seq, event_id, payload FROM goals ORDER BY seq LIMIT ?"
            return [(int(seq), str(eid), str(raw)) for seq, eid, raw in db.execute(query, (batch,))]

    def _forget(self, first: int, last: int) -> None:
        # AUTOINCREMENT never reuses a seq, and flushers take turns, so this range holds exactly
        # the rows just sent.
        with self._db() as db:
            db.execute("DELETE FROM goals WHERE seq BETWEEN ? AND ?", (first, last))

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(
            self.directory / DATABASE, timeout=self.lock_timeout, isolation_level=None
        )
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _flush_lock(self) -> Iterator[None]:
        """An exclusive ``flock``: per open file, so it orders threads as well as processes, and
        the kernel drops it when its holder dies."""
        fd = os.open(self.directory / FLUSH_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


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

    def __init__(self, spool: Spool, sender: Sender) -> None:
        self.spool = spool
        self.sender = sender
        self.redis_down = False
        self._next_check = 0.0
        self._reset_threads()
        _BACKLOGS.add(self)

    def keep(self, events: Sequence[GoalEvent], cause: EnqueueError | None = None) -> None:
        """Spool ``events`` (Redis failed with ``cause``, or is known to be down); never drops.

        Raises :class:`EnqueueError` if the spool cannot keep them either.
        """
        try:
            self.spool.add(events)
        except (OSError, sqlite3.Error) as exc:
            why = cause or "Redis was unreachable moments ago"
            raise EnqueueError(
                f"{why}; the spool at {self.spool.directory} could not keep the "
                f"{len(events)} goal(s) either ({type(exc).__name__}: {exc}): nothing was kept"
            ) from exc
        self.redis_down = True
        self._warn_spooled(len(events), cause)
        self.wake()

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
        """Stop the flusher (what it has not re-sent stays in the spool)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._again.clear()
            try:
                count = self.spool.flush(self.sender, progress=self._got_through)
            except Exception as exc:  # the thread must outlive any error: goals are waiting
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


_BACKLOGS: weakref.WeakSet[Backlog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backlog in list(_BACKLOGS):
        backlog._reset_threads()
        backlog._next_check = 0.0  # look at the spool on the child's first goal


os.register_at_fork(after_in_child=_after_fork_in_child)
