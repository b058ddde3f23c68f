"""The one exception tree of goalqueue.

    GoalQueueError
    ├── InvalidGoal        (a ValueError too) the goal breaks DataFast's rules; nothing enqueued
    ├── ConfigError        a setting is missing or malformed; raised once, at start
    └── EnqueueError       Redis did not confirm every goal of the call in time
        ├── NotEnqueued    ... and none of the unconfirmed ones is in Redis
        └── MaybeEnqueued  ... and the unconfirmed ones may be (the command went out, no answer
                           came back, or the replicas did not confirm it)

Every :class:`EnqueueError` carries the event ids of the call's goals (``event_ids``) and those
Redis confirmed (``enqueued``). Retrying with the same event ids is always safe: an event id
goalqueue still knows (queued, waiting, delivered, dead) is never enqueued twice. With
``GOALQUEUE_SPOOL_DIR`` set the producer does that itself and raises only if the spool fails too.

Lower-layer errors (redis-py, marshmallow) are translated once, at the edge, with
``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# How much of a bad value, and how many bad fields, an error message quotes: a 1 MB goal name
# or 10,000 bad metadata keys must not flood a log.
QUOTE_LIMIT = 40
FIELDS_SHOWN = 5


class GoalQueueError(Exception):
    """Root of every error goalqueue raises on purpose."""


class InvalidGoal(GoalQueueError, ValueError):
    """A goal event that DataFast would refuse; ``errors`` maps each bad field to its reasons."""

    def __init__(self, errors: Mapping[str, Sequence[str]]) -> None:
        self.errors: dict[str, list[str]] = {field: list(why) for field, why in errors.items()}
        shown = [
            f"{field}: {', '.join(why)}" for field, why in list(self.errors.items())[:FIELDS_SHOWN]
        ]
        if (more := len(self.errors) - FIELDS_SHOWN) > 0:
            shown.append(f"and {more} more bad field(s)")
        super().__init__(f"invalid goal: {'; '.join(shown)}")


class ConfigError(GoalQueueError):
    """A setting is missing or has a value that cannot work."""


class EnqueueError(GoalQueueError):
    """Redis did not confirm every goal of the call in time.

    ``event_ids`` are the ids of all the call's goals, in order; ``enqueued`` those Redis
    confirmed. Enqueueing the goals again with the same event ids never delivers one twice.
    """

    def __init__(
        self, message: str, event_ids: Sequence[str] = (), enqueued: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.event_ids = list(event_ids)
        self.enqueued = list(enqueued)

    @property
    def unconfirmed(self) -> list[str]:
        """The event ids Redis did not confirm, in order."""
        confirmed = set(self.enqueued)
        return [event_id for event_id in self.event_ids if event_id not in confirmed]


class NotEnqueued(EnqueueError):
    """None of the unconfirmed goals is in Redis: it refused them, or was never reached."""


class MaybeEnqueued(EnqueueError):
    """The unconfirmed goals may be in Redis: the command went out and no answer came back in
    time, or the replicas did not confirm it. Retrying with the same event ids is safe."""


def quote(value: object) -> str:
    """``repr(value)``, cut to a short prefix for an error message."""
    text = repr(value)
    if len(text) <= QUOTE_LIMIT:
        return text
    return f"{text[:QUOTE_LIMIT]}... ({len(text)} characters)"
