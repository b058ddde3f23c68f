"""One enqueue round trip: the commands that carry a call's goals, and what their replies mean.

Both producers (:mod:`goalqueue.producer`, :mod:`goalqueue.asyncio`) send a round the same way:
one ``EVALSHA`` of ENQUEUE per :data:`~goalqueue.keys.PER_CALL` goals (a call that holds Redis
for long would hold every client) and, with ``GOALQUEUE_MIN_REPLICAS``, a ``WAIT`` for that many
replicas, all in one round trip. A single goal without replicas is one bare ``EVALSHA``.

Each ``EVALSHA`` is all or nothing (ENQUEUE reads before it writes, so even a Redis at maxmemory
refuses it whole), but the chunks of a round are separate calls: Redis may refuse one and run the
next. :meth:`Round.check` reads the replies chunk by chunk, so an :class:`EnqueueError` says
exactly which goals Redis confirmed. An event id Redis already knew counts as confirmed: that goal
is queued, waiting, delivered or dead already.

Redis replicates asynchronously: a master that dies right after taking a goal may not have passed
it on, and the replica promoted in its place never saw it. Only goals the replicas confirmed are
reported enqueued; the others are :class:`MaybeEnqueued`, and sent again with the same ids they
are found known and add nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import redis

from goalqueue.config import Settings
from goalqueue.connections import explain
from goalqueue.errors import EnqueueError, MaybeEnqueued, NotEnqueued
from goalqueue.event import GoalEvent
from goalqueue.keys import PER_CALL
from goalqueue.scripts import EnqueueScript, ScriptArg
from goalqueue.urls import redact

Pair = tuple[str, str]
"""A goal as it is enqueued: its event id and its stored JSON."""


def pairs(events: Sequence[GoalEvent]) -> list[Pair]:
    """Events as they are enqueued."""
    return [(event.event_id, event.to_json()) for event in events]


@dataclass(frozen=True)
class Round:
    """The goals of one enqueue call, in chunks of at most :data:`PER_CALL`; ``new_ids``: every
    event id was made by the producer for this call (none can be known: ENQUEUE_NEW, no
    lookups)."""

    pairs: Sequence[Pair]
    settings: Settings
    new_ids: bool = False
    chunks: list[Sequence[Pair]] = field(init=False)

    def __post_init__(self) -> None:
        pairs = self.pairs
        chunks = [pairs[i : i + PER_CALL] for i in range(0, len(pairs), PER_CALL)]
        object.__setattr__(self, "chunks", chunks if len(pairs) > PER_CALL else [pairs])

    @property
    def event_ids(self) -> list[str]:
        return [event_id for event_id, _ in self.pairs]

    @property
    def replicas(self) -> int:
        """How many replicas must confirm the round (a WAIT after the scripts), or 0."""
        return self.settings.replicas_to_wait_for

    @property
    def single(self) -> bool:
        """One bare EVALSHA, no pipeline: one chunk and no WAIT."""
        return len(self.chunks) == 1 and not self.replicas

    def commands(self, script: EnqueueScript) -> list[tuple[str, list[ScriptArg]]]:
        """Each chunk's ``EVALSHA``: its SHA1 and its arguments (no keys)."""
        return [script.command(chunk, self.new_ids) for chunk in self.chunks]

    def again(self) -> Round:
        """The round to send after ``NOSCRIPT``: by ENQUEUE, whose lookups find the goals of any
        chunk that did run."""
        return replace(self, new_ids=False)

    def shortfall(self, replies: Sequence[object]) -> Shortfall | None:
        """What the replies leave unconfirmed (None: every goal): ``replies`` has one per chunk
        (its sequence numbers, or the error Redis gave it), then WAIT's count if one was sent."""
        refused = [isinstance(reply, redis.RedisError) for reply in replies[: len(self.chunks)]]
        if any(refused):
            refusal = replies[refused.index(True)]
            assert isinstance(refusal, redis.RedisError)
            confirmed = {
                event_id
                for chunk, no in zip(self.chunks, refused, strict=False)
                if not no
                for event_id, _ in chunk
            }
            return Shortfall(NotEnqueued, explain(refusal, self.settings), confirmed)
        if self.replicas:
            return self._replicas_shortfall(replies[-1])
        return None

    def _replicas_shortfall(self, reply: object) -> Shortfall | None:
        if isinstance(reply, int) and reply >= self.replicas:
            return None
        got = f"{explain(reply, self.settings)}: " if isinstance(reply, redis.RedisError) else ""
        return Shortfall(
            MaybeEnqueued,
            f"{got}Redis at {redact(self.settings.broker_url)} took them, but not "
            f"{self.replicas} replica(s) (GOALQUEUE_MIN_REPLICAS) confirmed them in time; a "
            "failover could lose them",
        )

    def failure(self, exc: redis.RedisError, sent: bool) -> Shortfall:
        """What a round that failed with ``exc`` leaves; ``sent``: its commands went out."""
        if sent and isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            timeout = self.settings.enqueue_timeout_seconds
            return Shortfall(MaybeEnqueued, f"{explain(exc, self.settings)}, within {timeout:g} s")
        return Shortfall(NotEnqueued, explain(exc, self.settings))

    def error(self, shortfall: Shortfall) -> EnqueueError:
        """The error for this round's goals (or for a part of a round that fell short)."""
        confirmed = [event_id for event_id, _ in self.pairs if event_id in shortfall.confirmed]
        count = len(self.pairs) - len(confirmed)
        if shortfall.kind is MaybeEnqueued:
            outcome = "they may be enqueued: enqueueing them again with the same event ids is safe"
        else:
            outcome = "they were not enqueued"
        if confirmed:
            outcome += f" ({len(confirmed)} other goal(s) of the call were)"
        message = f"could not enqueue {count} goal(s): {shortfall.why}; {outcome}"
        return shortfall.kind(message, self.event_ids, confirmed)


@dataclass(frozen=True)
class Shortfall:
    """Why a round's goals were not all confirmed, whether the others may be in Redis
    (``kind``), and the event ids Redis did confirm."""

    kind: type[EnqueueError]
    why: str
    confirmed: set[str] = field(default_factory=set)

    def leaves(self, pairs: Sequence[Pair]) -> bool:
        """Whether any of ``pairs`` is unconfirmed."""
        return any(event_id not in self.confirmed for event_id, _ in pairs)
