"""The Lua scripts, and the typed wrappers of those the producer, the CLI and the exporter run:
the one place that knows each of their keys and arguments (the worker's are in
:mod:`workers.scripts`).

Each script is one Redis call, so many producers and workers can run them at once without a
goal being lost or doubled. Every script that puts a goal on the queue uses ``push`` from
``lua/push.lua``: take the next sequence number, (re)score the goal's ledger entry with it, and
LPUSH the Celery message (see :mod:`goalqueue.message`). The queue is FIFO, so once a worker has
started on sequence N, every goal with a smaller sequence has left the queue: that is what lets
the reconciler find goals lost between kombu's BRPOP and its unacked bookkeeping without
scanning.

The scripts live in ``goalqueue/lua/``, each naming its KEYS and ARGV at the top.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

from redis import Redis

from goalqueue.keys import VISITOR_KEEP, VISITOR_WINDOW_SECONDS, Keys
from goalqueue.message import template
from goalqueue.tally import LETTER_REASONS

ScriptArg = str | int | float
# The dead-letter scripts' first argument: every reason a letter may be indexed under.
REASONS = " ".join(LETTER_REASONS)


@dataclass(frozen=True)
class LuaScript:
    """A script's source and its SHA1, for ``EVALSHA``."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


class EnqueueScript:
    """ENQUEUE (``lua/enqueue.lua``) and ENQUEUE_NEW (``lua/enqueue_new.lua``) for one
    namespace, as ``EVALSHA`` arguments: the same for the blocking and the asyncio producer, sent
    alone or in a pipeline.

    The namespace's keys and message template are constants of the scripts' source (so a
    namespace has scripts of its own), and each call carries only its goals: no key goes in
    KEYS. ``EVALSHA`` goes out bare: redis-py's pipeline would first ask ``SCRIPT EXISTS``, a
    round trip of its own. On ``NOSCRIPT`` (a master promoted by a failover starts with an empty
    script cache) that call did not run: load both scripts and send again (by ENQUEUE: another
    chunk of the round may have run).
    """

    def __init__(self, keys: Keys) -> None:
        head = lua_constants(
            SEQ_KEY=keys.seq, LEDGER_KEY=keys.ledger, QUEUE_KEY=keys.queue,
            PENDING_KEY=keys.pending, DEAD_KEY=keys.dead, DELIVERED_KEY=keys.delivered,
            TEMPLATE=template(keys), VISITOR_PREFIX=keys.visitor_prefix,
            VISITOR_KEEP=VISITOR_KEEP, VISITOR_WINDOW_MS=VISITOR_WINDOW_SECONDS * 1000,
        )  # fmt: skip
        self.checked = LuaScript(source("enqueue", "push", "marker", "enqueued", head=head))
        self.new = LuaScript(source("enqueue_new", "push", "enqueued", head=head))
        self.both = (self.checked, self.new)

    def command(
        self, goals: Sequence[tuple[str, str]], new_ids: bool
    ) -> tuple[str, list[ScriptArg]]:
        """The SHA1 and the arguments (after ``numkeys``, 0) of the ``EVALSHA`` that enqueues
        ``(event id, payload)`` pairs in one call: ENQUEUE_NEW when ``new_ids`` (ids the
        producer has just made, none known), else ENQUEUE. Its reply is each goal's sequence
        number, 0 for an event id already known."""
        args: list[ScriptArg] = []
        for event_id, payload in goals:
            args += (event_id, payload)
        return (self.new if new_ids else self.checked).sha, args


class Scripts:
    """The CLI's and the exporter's scripts, on a blocking client, for the namespace of
    ``keys``: REPLAY, PURGE and REINDEX dead letters, read STATE and DEAD_COUNTS, pause and
    resume by HAND."""

    def __init__(self, client: Redis, keys: Keys) -> None:
        self.keys = keys
        self._template = template(keys)
        self._replay = client.register_script(source("replay", "push", "dead"))
        self._purge = client.register_script(source("purge", "dead"))
        self._reindex = client.register_script(source("reindex", "dead"))
        self._state = client.register_script(source("state"))
        self._hand = client.register_script(source("hand", "operator"))
        self._dead_counts = client.register_script(source("dead_counts", "dead"))

    def replay(self, goals: Sequence[tuple[str, str]]) -> list[int]:
        """Dead letters' goals, ``(event id, payload)``, back onto the queue: each one's new
        sequence, or 0 if it was no longer a dead letter."""
        keys = self.keys
        args: list[ScriptArg] = [self._template, REASONS]
        for event_id, payload in goals:
            args += (event_id, payload)
        replies = self._replay(
            keys=[keys.dead, keys.seq, keys.ledger, keys.queue, keys.pending], args=args
        )
        return [int(seq) for seq in replies]

    def purge(self, event_ids: Sequence[str]) -> int:
        """Delete these dead letters; returns how many there were."""
        return int(self._purge(keys=[self.keys.dead], args=[REASONS, *event_ids]))

    def reindex(self, entries: Sequence[tuple[str, str, float, str]]) -> tuple[int, int]:
        """Make each ``(event id, reason, dead at, digest)`` true of the indexes (see
        ``lua/reindex.lua``); returns the entries added and removed."""
        args: list[ScriptArg] = [REASONS]
        for entry in entries:
            args += entry
        added, removed = self._reindex(keys=[self.keys.dead], args=args)
        return int(added), int(removed)

    def dead_counts(self) -> tuple[int, dict[str, int]]:
        """The dead letters in the hash, and in each reason's index, at one instant."""
        total, *counts = self._dead_counts(keys=[self.keys.dead], args=[REASONS])
        return int(total), dict(zip(LETTER_REASONS, map(int, counts), strict=True))

    def state(self) -> list[Any]:
        """STATE's reading: queued, waiting, ledger entries, delivered, dead letters, the
        pause's end and reason, the waiting goal due first, the message next in line, the send
        rate, and the pause by hand's since, until, reason, by and at (None for what is not
        there)."""
        keys = self.keys
        state: list[Any] = self._state(
            keys=[
                keys.queue, keys.waiting, keys.ledger, keys.delivered_count, keys.dead,
                keys.pause, keys.pace, keys.operator_pause,
            ]
        )  # fmt: skip
        return state

    def hand(
        self, op: str, now: float, until: float, reason: str, by: str, max_age: float
    ) -> list[Any]:
        """Pause by hand (``op`` pause) or resume (see ``lua/hand.lua``); returns the pause
        before: since, until, reason, by, at, and 1 if it was in force."""
        reply: list[Any] = self._hand(
            keys=[self.keys.operator_pause], args=[op, now, until, reason, by, max_age]
        )
        return reply


@cache
def source(name: str, *libraries: str, head: str = "") -> str:
    """A script's source: its ``#!lua`` line (its flags), ``head`` (its constants), the shared
    functions it uses (``lua/<library>.lua``), then its own code. Redis reads flags only on the
    first line."""
    lua = files("goalqueue") / "lua"
    own = (lua / f"{name}.lua").read_text()
    shebang, newline, code = own.partition("\n") if own.startswith("#!") else ("", "", own)
    shared = "".join((lua / f"{library}.lua").read_text() for library in libraries)
    return shebang + newline + head + shared + code


def lua_constants(**values: str | int) -> str:
    """Lua ``local`` lines that set each name to its value (text quoted byte by byte, so any
    text makes a valid literal)."""
    return "".join(f"local {name} = {_lua_literal(value)}\n" for name, value in values.items())


def _lua_literal(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    quoted = (
        chr(b) if 32 <= b < 127 and b not in (39, 92) else f"\\{b:03d}" for b in value.encode()
    )
    return "'" + "".join(quoted) + "'"
