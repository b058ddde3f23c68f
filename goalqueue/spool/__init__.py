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

The package: :mod:`~goalqueue.spool.store`, the directory of SQLite files;
:mod:`~goalqueue.spool.groupcommit`, how the threads that spool at once share one fsync;
:mod:`~goalqueue.spool.backlog`, a producer's use of the spool (keep, warn, re-send in the
background).
"""

from goalqueue.spool.backlog import Backlog
from goalqueue.spool.store import PayloadQueue, Spool

__all__ = ["Backlog", "PayloadQueue", "Spool"]
