"""Dead letters: goals delivery gave up on, kept in Redis until an operator replays or purges them.

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

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from goalqueue.event import GoalEvent, dumps
from goalqueue.keys import PER_CALL, Keys
from goalqueue.scripts import Scripts

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
    """The dead letters of one namespace, in one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.key = keys.dead
        self.scripts = Scripts(client, keys)

    def __iter__(self) -> Iterator[DeadLetter]:
        """Every readable dead letter (see :meth:`scan` for the corrupt ones)."""
        return iter(self.scan()[0])

    def scan(self) -> tuple[list[DeadLetter], list[CorruptLetter]]:
        """Every letter: the dead letters, and the values that are not."""
        letters: list[DeadLetter] = []
        corrupt: list[CorruptLetter] = []
        for event_id, raw in self.redis.hscan_iter(self.key, count=PER_CALL):
            letter = read(event_id, raw)
            if isinstance(letter, DeadLetter):
                letters.append(letter)
            else:
                corrupt.append(letter)
        return letters, corrupt

    def get(self, event_id: str) -> Letter | None:
        raw = self.redis.hget(self.key, event_id)
        return read(event_id, raw) if raw else None

    def replay(self, event_ids: Iterable[str]) -> tuple[list[str], list[CorruptLetter]]:
        """Put each dead event back on the queue, same event id, fresh attempts and age.

        Returns the ids replayed, and the corrupt letters met (left where they are); ids that
        are not dead letters, or poison without an event, are skipped.
        """
        replayed, corrupt = [], []
        for event_id in event_ids:
            letter = self.get(event_id)
            if isinstance(letter, CorruptLetter):
                corrupt.append(letter)
            if not isinstance(letter, DeadLetter) or letter.event is None:
                continue
            fresh = replace(
                letter.event,
                enqueued_at=round(time.time(), 3),
                attempts=0,
                first_attempt_at=None,
                last_attempt_at=None,
                last_status=None,
                last_error=None,
                unknown_attempts=0,
            )
            if self.scripts.replay(event_id, fresh.to_json()):
                replayed.append(event_id)
        return replayed, corrupt

    def all_ids(self) -> list[str]:
        return [field for field, _ in self.redis.hscan_iter(self.key, count=PER_CALL)]

    def purge(self, corrupt: bool = False) -> tuple[int, list[CorruptLetter]]:
        """Delete every dead letter, and the corrupt ones only if asked; returns how many were
        deleted, and the corrupt letters kept."""
        letters, unreadable = self.scan()
        doomed = [letter.event_id for letter in letters]
        if corrupt:
            doomed += [letter.event_id for letter in unreadable]
        for start in range(0, len(doomed), PER_CALL):
            self.redis.hdel(self.key, *doomed[start : start + PER_CALL])
        return len(doomed), [] if corrupt else unreadable
