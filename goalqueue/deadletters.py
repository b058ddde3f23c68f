"""Dead letters: goals delivery gave up on, kept in Redis until an operator replays or purges them,
or the workers prune them (``GOALQUEUE_DEAD_MAX``, ``GOALQUEUE_DEAD_RETENTION_DAYS``). Each is
indexed under its reason by when it died (see :mod:`goalqueue.keys`, ``lua/dead.lua``).

Reasons:

* ``bad_request``     DataFast answered 400 (bad field, reserved name, bot visitor)
* ``unknown_visitor`` DataFast answered 404 (the visitor has no pageview on the website)
* ``client_error``    any other 4xx that no retry can fix
* ``expired``         still undelivered after ``GOALQUEUE_MAX_AGE_SECONDS``, never sent or always
                      refused, so DataFast does not have it
* ``maybe_delivered`` a request timed out after it was sent (DataFast may have the goal), and
                      then the goal expired or used up ``GOALQUEUE_MAX_UNKNOWN_ATTEMPTS``: a
                      replay may send DataFast a goal it has
* ``unexpected_response`` DataFast's URL answered 2xx with something else than DataFast's
                      success body (a proxy, a captive portal, a wrong URL, a cut answer)
                      ``GOALQUEUE_MAX_UNKNOWN_ATTEMPTS`` times; ``error`` starts with the body
* ``poison``          the stored message could not be read; ``raw`` keeps what was there

A value in the dead-letter hash that is not a dead letter at all (a stray write, a bad
migration) is a :class:`CorruptLetter`: listed apart, never replayed, and kept by a purge unless
asked for, so that one bad value never stops the commands that act on the rest.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from goalqueue.event import GoalEvent, dumps
from goalqueue.keys import PER_CALL, Keys
from goalqueue.scripts import Scripts
from goalqueue.tally import CORRUPT, DEAD_REASONS, LETTER_REASONS

RAW_LIMIT = 4096
# What ``goalqueue dead list --json`` prints for each letter.
SUMMARY_FIELDS = (
    "event_id", "visitor_id", "name", "metadata", "description", "enqueued_at", "status_code",
    "reason", "error", "attempts", "first_attempt_at", "last_attempt_at", "dead_at", "raw",
    "corrupt",
)  # fmt: skip


@dataclass(frozen=True)
class DeadLetter:
    """One goal that will not be delivered unless replayed."""

    event_id: str
    reason: str
    status_code: int | None
    error: str | None
    attempts: int
    first_attempt_at: float | None
    last_attempt_at: float | None
    dead_at: float
    event: GoalEvent | None = None
    raw: str | None = None

    @classmethod
    def of(cls, event: GoalEvent, reason: str) -> DeadLetter:
        """The dead letter for ``event``, whose last attempt says what went wrong."""
        return cls(
            event_id=event.event_id,
            reason=reason,
            status_code=event.last_status,
            error=event.last_error,
            attempts=event.attempts,
            first_attempt_at=event.first_attempt_at,
            last_attempt_at=event.last_attempt_at,
            dead_at=time.time(),
            event=event,
        )

    @classmethod
    def poison(cls, raw: str | bytes, error: str) -> DeadLetter:
        """A dead letter for a payload that could not be read at all."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return cls(
            event_id=f"poison-{uuid.uuid4()}",
            reason="poison",
            status_code=None,
            error=error,
            attempts=0,
            first_attempt_at=None,
            last_attempt_at=None,
            dead_at=time.time(),
            raw=text[:RAW_LIMIT],
        )

    def to_json(self) -> str:
        record = asdict(self)
        record["event"] = self.event.to_json() if self.event else None
        return dumps(record)

    @classmethod
    def from_json(cls, raw: str | bytes) -> DeadLetter:
        """Parse a stored letter; ``ValueError`` says why it is not one."""
        try:
            record = json.loads(raw)
            event = record.pop("event")
            letter = cls(**record, event=GoalEvent.from_json(event) if event else None)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise ValueError(f"not a dead letter: {type(exc).__name__}: {exc}") from exc
        letter._check_types()
        return letter

    def _check_types(self) -> None:
        number = (int, float)
        fields: tuple[tuple[object, tuple[type, ...]], ...] = (
            (self.event_id, (str,)), (self.reason, (str,)), (self.dead_at, number),
            (self.attempts, (int,)), (self.status_code, (int, type(None))),
            (self.error, (str, type(None))), (self.raw, (str, type(None))),
            (self.first_attempt_at, (*number, type(None))),
            (self.last_attempt_at, (*number, type(None))),
        )  # fmt: skip
        if not all(isinstance(v, t) and not isinstance(v, bool) for v, t in fields):
            raise ValueError("not a dead letter: a field has the wrong type")

    def summary(self) -> dict[str, Any]:
        """What ``goalqueue dead list --json`` prints for this letter."""
        event = self.event
        return {
            "event_id": self.event_id,
            "visitor_id": event.visitor_id if event else None,
            "name": event.name if event else None,
            "metadata": event.metadata if event else None,
            "description": event.description if event else None,
            "enqueued_at": event.enqueued_at if event else None,
            "status_code": self.status_code,
            "reason": self.reason,
            "error": self.error,
            "attempts": self.attempts,
            "first_attempt_at": self.first_attempt_at,
            "last_attempt_at": self.last_attempt_at,
            "dead_at": self.dead_at,
            "raw": self.raw,
            "corrupt": False,
        }


@dataclass(frozen=True)
class CorruptLetter:
    """A value of the dead-letter hash that is not a dead letter, under its field."""

    event_id: str
    error: str
    raw: str

    @classmethod
    def of(cls, event_id: str, raw: str | bytes, error: str) -> CorruptLetter:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return cls(event_id, error, text[:RAW_LIMIT])

    def summary(self) -> dict[str, Any]:
        """What ``goalqueue dead list --json`` prints for it: a letter's fields, null but for
        its field in the hash, why it is unreadable, its text, and ``corrupt``."""
        blank = dict.fromkeys(SUMMARY_FIELDS)
        return blank | {"event_id": self.event_id, "error": self.error, "raw": self.raw,
                        "corrupt": True}  # fmt: skip


Letter = DeadLetter | CorruptLetter


def read(event_id: str, raw: str | bytes) -> Letter:
    """The letter stored under ``event_id``: a dead letter, or a corrupt one."""
    try:
        letter = DeadLetter.from_json(raw)
    except ValueError as exc:
        return CorruptLetter.of(event_id, raw, str(exc))
    if letter.event_id != event_id:
        return CorruptLetter.of(event_id, raw, f"stored under another event id ({letter.event_id})")
    return letter


class DeadLetters:
    """The dead letters of one namespace, in one Redis, read through the reasons' indexes
    (event ids by when they died): oldest first, a page at a time."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self.key = keys.dead
        self.scripts = Scripts(client, keys)

    def __iter__(self) -> Iterator[DeadLetter]:
        """Every readable dead letter, oldest first."""
        everything = self.pages(LETTER_REASONS, (-math.inf, math.inf), _any)
        return (
            letter for _, page in everything for letter in page if isinstance(letter, DeadLetter)
        )

    def get(self, event_id: str) -> Letter | None:
        raw = self.redis.hget(self.key, event_id)
        return read(event_id, raw) if raw else None

    def pages(
        self,
        reasons: Iterable[str],
        window: tuple[float, float],
        keep: Callable[[DeadLetter], bool],
        size: int = PER_CALL,
    ) -> Iterator[tuple[int, list[Letter]]]:
        """The letters in ``reasons``' indexes that died within ``window`` (both included),
        oldest first, a page at a time: how many index entries the page read, and the dead
        letters among them ``keep`` wants with every corrupt one."""
        low, high = window
        entries = heapq.merge(*(self._entries(reason, low, high, size) for reason in reasons))
        while page := list(itertools.islice(entries, size)):
            ids = [event_id for _, event_id in page]
            letters = [
                read(event_id, raw)
                for event_id, raw in zip(ids, self.redis.hmget(self.key, ids), strict=True)
                if raw is not None
            ]
            yield (
                len(page),
                [
                    letter
                    for letter in letters
                    if not isinstance(letter, DeadLetter) or keep(letter)
                ],
            )

    def within(self, reasons: Iterable[str], window: tuple[float, float]) -> int:
        """How many index entries :meth:`pages` reads for ``reasons`` and ``window``."""
        low, high = (_score(bound) for bound in window)
        with self.redis.pipeline(transaction=False) as pipe:
            for reason in reasons:
                pipe.zcount(self.keys.dead_index(reason), low, high)
            return sum(pipe.execute())

    def _entries(
        self, reason: str, low: float, high: float, size: int
    ) -> Iterator[tuple[float, str]]:
        """``reason``'s index entries from ``low`` to ``high``, by score then event id, read a
        page at a time from the last score read: entries deleted meanwhile move nothing."""
        index, start, stop = self.keys.dead_index(reason), _score(low), _score(high)
        while True:
            page = _scored(self.redis.zrangebyscore(index, start, stop, 0, size, withscores=True))
            if len(page) < size:
                yield from page
                return
            last = page[-1][0]
            before = [entry for entry in page if entry[0] < last]
            if before:
                start = repr(last)
            else:  # a whole page dead at one instant: read every entry of it
                before = _scored(self.redis.zrangebyscore(index, last, last, withscores=True))
                start = f"({last!r}"
            yield from before

    def replay(self, event_ids: Iterable[str]) -> tuple[list[str], list[CorruptLetter]]:
        """Put each dead event back on the queue, same event id, fresh attempts and age.

        Returns the ids replayed, and the corrupt letters met (left where they are); ids that
        are not dead letters, or poison without an event, are skipped.
        """
        ids = list(event_ids)
        raws = self.redis.hmget(self.key, ids) if ids else []
        letters = [read(i, raw) for i, raw in zip(ids, raws, strict=True) if raw is not None]
        corrupt = [letter for letter in letters if isinstance(letter, CorruptLetter)]
        return self.requeue([x for x in letters if isinstance(x, DeadLetter)]), corrupt

    def requeue(self, letters: Iterable[DeadLetter]) -> list[str]:
        """Put the goal of each letter (poison has none) back on the queue in one call, if it
        is still dead; returns the event ids replayed."""
        now = round(time.time(), 3)
        goals = [
            (letter.event_id, _fresh(letter.event, now).to_json())
            for letter in letters
            if letter.event is not None
        ]
        sequences = self.scripts.replay(goals) if goals else []
        return [event_id for (event_id, _), seq in zip(goals, sequences, strict=True) if seq]

    def purge(self, event_ids: Sequence[str]) -> int:
        """Delete these letters for good; returns how many there were."""
        return self.scripts.purge(event_ids) if event_ids else 0

    def unindexed(self) -> int:
        """How many letters are in no reason's index: no command sees them until
        :meth:`recount` indexes them."""
        total, counts = self.scripts.dead_counts()
        return max(0, total - sum(counts.values()))

    def recount(self, now: float) -> tuple[int, int]:
        """Put every letter in the index of its reason (a corrupt one in ``corrupt``'s, as
        dead at ``now``) and no other, and drop index entries whose letter is gone; returns
        how many entries were added and removed. Safe while workers write letters: each call
        changes only letters still as read."""
        added = removed = 0
        letters = self.redis.hscan_iter(self.key, count=PER_CALL)
        while chunk := list(itertools.islice(letters, PER_CALL)):
            found = [_indexed(event_id, raw, now) for event_id, raw in chunk]
            more, fewer = self.scripts.reindex(found)
            added, removed = added + more, removed + fewer
        for reason in LETTER_REASONS:
            entries = self.redis.zscan_iter(self.keys.dead_index(reason), count=PER_CALL)
            while chunk := list(itertools.islice(entries, PER_CALL)):
                _, fewer = self.scripts.reindex([(event_id, "", 0, "") for event_id, _ in chunk])
                removed += fewer
        return added, removed


def _fresh(event: GoalEvent, now: float) -> GoalEvent:
    """``event`` as replayed: enqueued ``now``, with no attempts."""
    return replace(
        event,
        enqueued_at=now,
        attempts=0,
        first_attempt_at=None,
        last_attempt_at=None,
        last_status=None,
        last_error=None,
        unknown_attempts=0,
    )


def _indexed(event_id: str, raw: str, now: float) -> tuple[str, str, float, str]:
    """Where a stored letter belongs: event id, reason, dead at, and its text's digest."""
    letter = read(event_id, raw)
    digest = hashlib.sha1(raw.encode()).hexdigest()
    if isinstance(letter, DeadLetter) and letter.reason in DEAD_REASONS:
        return event_id, letter.reason, letter.dead_at, digest
    return event_id, CORRUPT, now, digest


def _scored(page: Any) -> list[tuple[float, str]]:
    """A ZRANGEBYSCORE page with scores as (score, member) pairs."""
    return [(float(score), str(member)) for member, score in page]


def _score(bound: float) -> str:
    """A time as an index score bound (Redis reads ``repr`` exactly)."""
    return "-inf" if bound == -math.inf else "+inf" if bound == math.inf else repr(bound)


def _any(letter: DeadLetter) -> bool:
    return True
