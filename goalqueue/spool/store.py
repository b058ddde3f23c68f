"""The spool's directory: one SQLite database (WAL, ``synchronous=FULL``) per writing process,
its owner lock, and the flush lock that lets one batch at a time be re-sent (see
:mod:`goalqueue.spool` for why it is built this way).

The spool holds visitor ids and metadata, often personal data: the directory is made (or made
again) 0700 and every file in it 0600, whatever the umask.

No wait here blocks in C. SQLite's busy handler and a blocking ``flock`` would sleep inside a
system call, holding a gevent hub (every greenlet of the process) or an event loop for as long
as another process holds the lock; every lock is instead tried without blocking and tried again
after ``time.sleep``, which gevent's monkey-patching turns into a cooperative wait.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from goalqueue.event import GoalEvent
from goalqueue.keys import PER_CALL
from goalqueue.spool.forks import start_over_after_fork
from goalqueue.spool.groupcommit import GroupCommit

FLUSH_LOCK = "flush.lock"
# How long adding goals may wait for a lock (another thread's write, a flusher's delete): on
# top of the enqueue timeout, the most a request that spools can wait.
SPOOL_WAIT_SECONDS = 0.5
# How long a flusher may wait for the flush lock that another process's flusher holds.
FLUSH_WAIT_SECONDS = 30.0
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600

T = TypeVar("T")
# A goal as stored: event id, payload, when it was spooled.
Row = tuple[str, str, float]

_SCHEMA = """
CREATE TABLE goals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    spooled_at REAL NOT NULL
)
"""


class PayloadQueue(Protocol):
    """Where a flush re-sends stored goals: the Redis queue (a :class:`~goalqueue.GoalQueue`)."""

    def enqueue_payloads(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Enqueue ``(event id, event JSON)`` pairs, or raise :class:`EnqueueError`."""


class Spool:
    """A directory of goals that wait for Redis; safe to share between threads and forks."""

    def __init__(
        self, directory: str | os.PathLike[str], *, lock_timeout: float = SPOOL_WAIT_SECONDS
    ) -> None:
        """Use ``directory`` (created if needed, made private) as the spool.

        ``lock_timeout`` bounds each wait for a lock: another thread's write, a flusher's delete.
        """
        self.directory = Path(directory)
        self.lock_timeout = lock_timeout
        self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        if stat.S_IMODE(self.directory.stat().st_mode) != DIRECTORY_MODE:
            self.directory.chmod(DIRECTORY_MODE)
        self._own: Path | None = None
        self._writer: sqlite3.Connection | None = None
        self._claim = _Claim()
        self._commits: GroupCommit[Row] = GroupCommit(self._write, lock_timeout)
        weakref.finalize(self, self._claim.release)
        start_over_after_fork(self)

    def add(self, events: Sequence[GoalEvent]) -> None:
        """Keep ``events`` durably (fsynced) before returning, all of them or none."""
        now = time.time()
        rows = [(event.event_id, event.to_json(), now) for event in events]
        for _, payload, _ in rows:
            payload.encode()  # a bad string fails its own add, not the group's shared commit
        self._commits.submit(rows)

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
        queue: PayloadQueue,
        batch: int = PER_CALL,
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
                while rows := self._send_head(path, queue, batch):
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
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._claim.release()

    def _write(self, rows: list[Row]) -> None:
        """One transaction on this process's file, through the connection kept open to it.

        Kept open, it is never the last connection to close, which would checkpoint the WAL
        under an exclusive lock: that, with connections opened per write, had other processes'
        writes wait past their bound under load ("database is locked").
        """
        if self._writer is None:
            self._writer = self._open(self._own or self._create_own(), shared=True)
        db = self._writer
        _patiently(lambda: db.execute("BEGIN IMMEDIATE"), self.lock_timeout)
        try:
            db.executemany(
                "INSERT INTO goals (event_id, payload, spooled_at) VALUES (?, ?, ?)", rows
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _send_head(self, path: Path, queue: PayloadQueue, batch: int) -> int:
        with self._flush_lock():
            rows = _query(self, path, _HEAD, (batch,))
            if not rows:
                return 0
            queue.enqueue_payloads([(event_id, payload) for _, event_id, payload in rows])
            # AUTOINCREMENT never reuses a seq and flushers take turns: this range holds exactly
            # the rows just sent
            span = (rows[0][0], rows[-1][0])
            with self._connect(path) as db:
                delete = "DELETE FROM goals WHERE seq BETWEEN ? AND ?"
                _patiently(lambda: db.execute(delete, span), FLUSH_WAIT_SECONDS)
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
        _private_file(fresh)  # SQLite gives the -wal and -shm files the database's mode
        with self._connect(fresh) as db:
            _patiently(lambda: db.execute("PRAGMA journal_mode=WAL"), self.lock_timeout)
            db.execute(_SCHEMA)
        os.rename(fresh, path)  # closed, so the WAL is checkpointed and gone: only one file moves
        _fsync_directory(self.directory)
        self._own = path
        return path

    @contextmanager
    def _connect(self, path: Path) -> Iterator[sqlite3.Connection]:
        db = self._open(path)
        try:
            yield db
        finally:
            db.close()

    def _open(self, path: Path, shared: bool = False) -> sqlite3.Connection:
        """A connection to ``path`` (``shared``: usable from any thread, one at a time)."""
        db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=not shared)
        # a first statement may find the file busy: another process checkpointing the WAL
        _patiently(lambda: db.execute("PRAGMA synchronous=FULL"), self.lock_timeout)
        return db

    @contextmanager
    def _flush_lock(self) -> Iterator[None]:
        """An exclusive ``flock``: per open file, so it orders threads as well as processes, and
        the kernel drops it when its holder dies."""
        fd = os.open(self.directory / FLUSH_LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            _patiently(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), FLUSH_WAIT_SECONDS)
            yield
        finally:
            os.close(fd)

    def after_fork(self) -> None:
        """In a forked child: its own writer and, on its first goal, its own file. The parent's
        connection is never used, nor closed, here: SQLite forbids either after a fork."""
        if self._writer is not None:
            _INHERITED.append(self._writer)
        self._writer = None
        self._commits = GroupCommit(self._write, self.lock_timeout)
        self._own = None
        self._claim.release()  # the child's copy; the parent's claim stays


# Connections a forked child inherited: kept referenced, so that no finaliser closes them.
_INHERITED: list[sqlite3.Connection] = []


_COUNT = "SELECT count(*) FROM goals"
_FIRST_TIME = "SELECT spooled_at FROM goals ORDER BY seq LIMIT 1"
_HEAD = "SELECT seq, event_id, payload FROM goals ORDER BY seq LIMIT ?"


def _query(spool: Spool, path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql`` on one of the spool's files; none if a flusher just removed it."""
    uri = f"{path.absolute().as_uri()}?mode=rw"  # never create a file that was just removed
    try:
        db = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
    except sqlite3.OperationalError:
        if path.exists():
            raise
        return []
    try:
        return _patiently(lambda: db.execute(sql, params).fetchall(), FLUSH_WAIT_SECONDS)
    finally:
        db.close()


class _Claim:
    """A process's shared ``flock`` on its file's ``.owner``: held while it may still write."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def take(self, owner: Path) -> None:
        self.release()
        fd = os.open(owner, os.O_RDWR | os.O_CREAT, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_SH)  # a new file: no other process holds it
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _patiently(action: Callable[[], T], timeout: float) -> T:
    """``action()``, tried again while a lock is busy (SQLite's ``database is locked``, a
    non-blocking ``flock``) for up to ``timeout`` seconds, waiting in ``time.sleep``."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            return action()
        except (sqlite3.OperationalError, BlockingIOError) as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _busy(exc: Exception) -> bool:
    if isinstance(exc, BlockingIOError):
        return True
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _private_file(path: Path) -> None:
    """Make ``path`` empty and readable by its owner only, whatever the umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
