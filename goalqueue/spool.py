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
* re-sent goals are deleted by primary key in a short transaction: no offsets, rotation or
  compaction to get right, and in WAL mode readers (``status``, a flusher) never block writers;
* it is in the standard library.

The directory holds one database per writing process (``goals-<pid>-<random>.sqlite3``, made
on the first goal it spools)::

    flush.lock                      flock: one batch in flight, across threads and processes
    goals-<token>.sqlite3 (-wal, -shm)   the goals one process spooled
    goals-<token>.owner             flock held (shared) by that process while it lives

One shared database would make every web worker's writes queue for one lock, which SQLite
grants by polling: under a burst, a writer can miss it for longer than any sensible timeout.
With a file each, the threads of one process share group commits (one transaction and one
fsync for whatever they spool at that moment), and another process only touches the file to
re-send and delete what it holds. Flushers read every file;
once a file is empty and its owner lock is free (the process died or closed its spool), the
file is removed. Files are only made when Redis is down, so a healthy spool is an empty
directory. The cost is one fsync per spooling call, and the directory must be on a local file
system: WAL's shared memory and ``flock`` do not work over NFS.

Re-sending is at least once. A batch is deleted only after Redis took it, so a crash in between
sends it again, and so does a goal whose enqueue timed out although a busy Redis ran it late.
The payload is re-sent byte for byte, which lets the Redis side absorb most of these copies: the
ledger is a set of payloads, so a copy of a goal still waiting on the queue re-scores its ledger
entry and the older message finds it ``gone``; a copy of a delivered goal finds the delivered
marker and is settled without a request. Only a copy that arrives while the first one is being
POSTed, or after the delivered marker expired, is sent twice, and then with the same
``Idempotency-Key`` (the event id).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from goalqueue.errors import EnqueueError
from goalqueue.event import GoalEvent

logger = logging.getLogger(__name__)

FLUSH_LOCK = "flush.lock"
BATCH = 500

_SCHEMA = """
CREATE TABLE goals (
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
    """A directory of goals that wait for Redis; safe to share between threads and forks."""

    def __init__(self, directory: str | os.PathLike[str], *, lock_timeout: float = 5.0) -> None:
        """Use ``directory`` (created if needed) as the spool.

        ``lock_timeout`` bounds each wait for a lock: another thread's write, a flusher's delete.
        """
        self.directory = Path(directory)
        self.lock_timeout = lock_timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        self._own: Path | None = None
        self._claim = _Claim()
        self._batcher = _Batcher(self._write, lock_timeout)
        weakref.finalize(self, self._claim.release)
        _FORK_AWARE.add(self)

    def add(self, events: Sequence[GoalEvent]) -> None:
        """Keep ``events`` durably (fsynced) before returning, all of them or none."""
        now = time.time()
        rows = [(event.event_id, event.to_json(), now) for event in events]
        for _, payload, _ in rows:
            payload.encode()  # a bad string fails its own add, not the group's shared commit
        self._batcher.submit(rows)

    def pending(self) -> int:
        """How many goals wait in the spool, from every process."""
        return sum(count for path in self.files() for (count,) in _query(self, path, _COUNT))

    def oldest(self) -> float | None:
        """When the oldest waiting goal was spooled (unix time), or ``None`` if none waits."""
        firsts = [at for path in self.files() for (at,) in _query(self, path, _FIRST_TIME)]
        return min(firsts, default=None)

    def files(self) -> list[Path]:
        """The spool's databases, one per process that spooled something."""
        return sorted(self.directory.glob("goals-*.sqlite3"))

    def flush(
        self,
        sender: Sender,
        batch: int = BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Re-send every waiting goal, ``batch`` at a time, oldest first per file; returns how
        many were re-sent.

        A batch is deleted only after Redis took it. One batch is in flight at a time across all
        threads and processes on this directory, so two flushers never send the same goals.
        ``progress`` is called with the size of each batch re-sent. Raises
        :class:`EnqueueError` when Redis does not take a batch; what was not sent stays.
        """
        sent, unreadable = 0, []
        for path in self.files():
            try:
                while rows := self._send_head(path, sender, batch):
                    sent += rows
                    if progress is not None:
                        progress(rows)
                self._remove_if_abandoned(path)
            except sqlite3.DatabaseError as exc:  # one bad file must not hold up the others
                unreadable.append(f"{path.name}: {exc}")
        if unreadable:
            raise sqlite3.DatabaseError(f"spool file(s) left in place: {'; '.join(unreadable)}")
        return sent

    def close(self) -> None:
        """Give up this process's file: once empty, any flusher may remove it."""
        self._claim.release()

    def _write(self, rows: list[Row]) -> None:
        with self._connect(self._own or self._create_own()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO goals (event_id, payload, spooled_at) VALUES (?, ?, ?)", rows
            )
            db.execute("COMMIT")

    def _send_head(self, path: Path, sender: Sender, batch: int) -> int:
        with self._flush_lock():
            rows = _query(self, path, _HEAD, (batch,))
            if not rows:
                return 0
            sender.enqueue_payloads([(event_id, payload) for _, event_id, payload in rows])
            # AUTOINCREMENT never reuses a seq and flushers take turns: this range holds exactly
            # the rows just sent
            with self._connect(path) as db:
                db.execute("DELETE FROM goals WHERE seq BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))
            return len(rows)

    def _remove_if_abandoned(self, path: Path) -> None:
        owner = path.with_suffix(".owner")
        with self._flush_lock():
            try:
                fd = os.open(owner, os.O_RDWR)
            except FileNotFoundError:
                fd = None
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        return  # its process still lives and may spool more
                if _query(self, path, _COUNT) != [(0,)]:
                    return
                for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), owner):
                    leftover.unlink(missing_ok=True)
            finally:
                if fd is not None:
                    os.close(fd)

    def _create_own(self) -> Path:
        """This process's database, claimed before it appears under its final name."""
        token = f"goals-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._claim.take(self.directory / f"{token}.owner")
        fresh, path = self.directory / f"{token}.new", self.directory / f"{token}.sqlite3"
        with self._connect(fresh) as db:
            db.execute("PRAGMA journal_mode=WAL")  # kept in the file
            db.execute(_SCHEMA)
        os.rename(fresh, path)  # closed, so the WAL is checkpointed and gone: only one file moves
        _fsync_directory(self.directory)
        self._own = path
        return path

    @contextmanager
    def _connect(self, path: Path) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(path, timeout=self.lock_timeout, isolation_level=None)
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

    def _after_fork(self) -> None:
        """In a forked child: its own writer and, on its first goal, its own file."""
        self._batcher = _Batcher(self._write, self.lock_timeout)
        self._own = None
        self._claim.release()  # the child's copy; the parent's claim stays


_COUNT = "SELECT count(*) FROM goals"
_FIRST_TIME = "SELECT spooled_at FROM goals ORDER BY seq LIMIT 1"
_HEAD = "SELECT seq, event_id, payload FROM goals ORDER BY seq LIMIT ?"


def _query(spool: Spool, path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql`` on one of the spool's files; none if a flusher just removed it."""
    uri = f"{path.absolute().as_uri()}?mode=rw"  # never create a file that was just removed
    try:
        db = sqlite3.connect(uri, uri=True, timeout=spool.lock_timeout, isolation_level=None)
    except sqlite3.OperationalError:
        if path.exists():
            raise
        return []
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


Row = tuple[str, str, float]


class _Batcher:
    """Group commit: threads that spool at the same time share one transaction and one fsync.

    A thread queues its rows and, unless a write is under way, writes everything queued; else it
    waits for the write that takes its rows. No thread queues for a lock that others may grab
    first, so a burst cannot starve one of them, and it costs one fsync per write, not per goal.
    """

    def __init__(self, write: Callable[[list[Row]], None], timeout: float) -> None:
        self._write = write
        self._timeout = timeout
        self._changed = threading.Condition()
        self._queued: list[_Ticket] = []
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

    def _wait_turn(self, ticket: _Ticket) -> None:
        """Until this ticket was written by another thread, or no write is under way. A ticket
        not yet taken is withdrawn after the timeout; one being written waits for that write."""
        deadline = time.monotonic() + self._timeout
        while self._writing and not ticket.done:
            left = deadline - time.monotonic()
            if left <= 0 and ticket in self._queued:
                self._queued.remove(ticket)
                raise TimeoutError(f"the spool was busy for {self._timeout:g} s")
            self._changed.wait(max(left, 0.01))


class _Ticket:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None


class _Claim:
    """A process's shared ``flock`` on its file's ``.owner``: held while it may still write."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def take(self, owner: Path) -> None:
        self.release()
        fd = os.open(owner, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
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
        _FORK_AWARE.add(self)

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
                count = self.spool.flush(self.sender, progress=self._got_through)
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

    def _after_fork(self) -> None:
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


_FORK_AWARE: weakref.WeakSet[Spool | Backlog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for thing in list(_FORK_AWARE):
        thing._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
