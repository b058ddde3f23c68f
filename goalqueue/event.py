"""A goal event as it travels through Redis, and its compact JSON form.

The stored form uses one-letter keys and leaves out empty fields: a backlog after an outage can
run to millions of events, and every byte is paid for once per waiting goal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

# field name -> key in the stored JSON
_WIRE = {
    "event_id": "i",
    "visitor_id": "v",
    "name": "n",
    "metadata": "m",
    "description": "d",
    "enqueued_at": "t",
    "attempts": "a",
    "first_attempt_at": "f",
    "last_attempt_at": "l",
    "last_status": "s",
    "last_error": "e",
    "unknown_attempts": "u",
}
_FIELD = {wire: name for name, wire in _WIRE.items()}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class GoalEvent:
    """One goal, with what delivery has learnt about it so far."""

    event_id: str
    visitor_id: str
    name: str
    enqueued_at: float
    metadata: dict[str, str] | None = None
    description: str | None = None
    attempts: int = 0
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    unknown_attempts: int = 0  # attempts whose outcome is unknown: DataFast may have the goal

    def to_json(self) -> str:
        """The compact stored form (no unknown attempts: no ``u``, as most goals have none).
        Keys in :data:`_WIRE`'s order; written out field by field, as it runs for every goal
        enqueued and every attempt."""
        stored: dict[str, Any] = {"i": self.event_id, "v": self.visitor_id, "n": self.name}
        if self.metadata is not None:
            stored["m"] = self.metadata
        if self.description is not None:
            stored["d"] = self.description
        stored["t"] = self.enqueued_at
        stored["a"] = self.attempts
        if self.first_attempt_at is not None:
            stored["f"] = self.first_attempt_at
        if self.last_attempt_at is not None:
            stored["l"] = self.last_attempt_at
        if self.last_status is not None:
            stored["s"] = self.last_status
        if self.last_error is not None:
            stored["e"] = self.last_error
        if self.unknown_attempts:
            stored["u"] = self.unknown_attempts
        return _dumps(stored)

    @classmethod
    def from_json(cls, raw: str | bytes) -> GoalEvent:
        """Parse the stored form; ``ValueError`` says why a payload is unusable (poison)."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"undecodable event: {type(exc).__name__}") from exc
        if not isinstance(data, dict) or not set(data) <= set(_FIELD):
            raise ValueError("event is not an object of known fields")
        try:
            event = cls(**{_FIELD[k]: v for k, v in data.items()})
        except TypeError as exc:
            raise ValueError(f"event lacks a field: {exc}") from exc
        event._check_types()
        return event

    def attempted(
        self, at: float, status: int | None, error: str | None, *, unknown: bool = False
    ) -> GoalEvent:
        """This event after one more delivery attempt at ``at``; ``unknown`` when DataFast may
        have taken the goal without saying so."""
        return replace(
            self,
            attempts=self.attempts + 1,
            first_attempt_at=self.first_attempt_at or at,
            last_attempt_at=at,
            last_status=status,
            last_error=error,
            unknown_attempts=self.unknown_attempts + int(unknown),
        )

    def api_body(self) -> dict[str, Any]:
        """The JSON body DataFast's goals endpoint expects."""
        body: dict[str, Any] = {"datafast_visitor_id": self.visitor_id, "name": self.name}
        if self.metadata:
            body["metadata"] = self.metadata
        if self.description is not None:
            body["description"] = self.description
        return body

    def _check_types(self) -> None:
        """Reject what is not a goal event (read back from Redis, it may be anything). Written
        out field by field: it runs for every goal a worker takes."""
        for text in (self.event_id, self.visitor_id, self.name):
            if type(text) is not str or not text:
                raise ValueError("event id, visitor id and name must be non-empty strings")
        if self.metadata is not None:
            if type(self.metadata) is not dict:
                raise ValueError("metadata must map strings to strings")
            for key, value in self.metadata.items():
                if type(key) is not str or type(value) is not str:
                    raise ValueError("metadata must map strings to strings")
        if self.description is not None and type(self.description) is not str:
            raise ValueError("description must be a string")
        if not _finite(self.enqueued_at) or type(self.attempts) is not int:
            raise ValueError("enqueued_at and attempts must be numbers")
        if type(self.unknown_attempts) is not int:
            raise ValueError("unknown_attempts must be an integer")
        for at in (self.first_attempt_at, self.last_attempt_at):
            if at is not None and not _finite(at):
                raise ValueError("attempt times must be numbers")
        if self.last_status is not None and type(self.last_status) is not int:
            raise ValueError("last_status must be an integer")
        if self.last_error is not None and type(self.last_error) is not str:
            raise ValueError("last_error must be a string")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def dumps(value: object) -> str:
    """Compact JSON, as every goalqueue record in Redis is written."""
    return _dumps(value)
