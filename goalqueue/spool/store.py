"""The spool's directory: one SQLite database (WAL, ``synchronous=FULL``) per writing process,
its owner lock, and the flush lock that lets one batch at a time be re-sent (see
:mod:`goalqueue.spool` for why it is built this way)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from goalqueue.event import GoalEvent
from goalqueue.keys import PER_CALL
from goalqueue.spool.forks import start_over_after_fork
from goalqueue.spool.groupcommit import GroupCommit

FLUSH_LOCK = "flush.lock"

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

    def __init__(self, directory: str | os.PathLike[str], *, lock_timeout: float = 5.0) -> None:
        """Use ``directory`` (created if needed) as the spool.

        ``lock_timeout`` bounds each wait for a lock: another thread's write, a flusher's delete.
        """
        self.directory = Path(directory)
        self.lock_timeout = lock_timeout
        self.directory.mkdir(parents=True, exist_ok=True)
        self._own: Path | None = None
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
        self._claim.release()

    def _write(self, rows: list[Row]) -> None:
        with self._connect(self._own or self._create_own()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO goals (event_id, payload, spooled_at) VALUES (?, ?, ?)", rows
            )
            db.execute("COMMIT")

    def _send_head(self, path: Path, queue: PayloadQueue, batch: int) -> int:
        with self._flush_lock():
            rows = _query(self, path, _HEAD, (batch,))
            if not rows:
                return 0
            queue.enqueue_payloads([(event_id, payload) for _, event_id, payload in rows])
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

    def after_fork(self) -> None:
        """In a forked child: its own writer and, on its first goal, its own file."""
        self._commits = GroupCommit(self._write, self.lock_timeout)
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
