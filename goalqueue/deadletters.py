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
        record = json.loads(raw)
        event = record.pop("event")
        return cls(**record, event=GoalEvent.from_json(event) if event else None)

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
        }


class DeadLetters:
    """The dead letters of one namespace, in one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.key = keys.dead
        self.scripts = Scripts(client, keys)

    def __iter__(self) -> Iterator[DeadLetter]:
        for _, raw in self.redis.hscan_iter(self.key, count=PER_CALL):
            yield DeadLetter.from_json(raw)

    def get(self, event_id: str) -> DeadLetter | None:
        raw = self.redis.hget(self.key, event_id)
        return DeadLetter.from_json(raw) if raw else None

    def replay(self, event_ids: Iterable[str]) -> list[str]:
        """Put each dead event back on the queue, same event id, fresh attempts and age.

        Returns the ids replayed; ids that are not dead letters, or poison without an event,
        are skipped.
        """
        replayed = []
        for event_id in event_ids:
            letter = self.get(event_id)
            if letter is None or letter.event is None:
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
        return replayed

    def all_ids(self) -> list[str]:
        return [field for field, _ in self.redis.hscan_iter(self.key, count=PER_CALL)]

    def purge(self) -> int:
        """Delete every dead letter; returns how many there were."""
        with self.redis.pipeline() as pipe:
            pipe.hlen(self.key)
            pipe.delete(self.key)
            count, _ = pipe.execute()
        return int(count)
