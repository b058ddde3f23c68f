"""The one exception tree of goalqueue.

    GoalQueueError
    ├── InvalidGoal        (a ValueError too) the goal breaks DataFast's rules; nothing enqueued
    ├── ConfigError        a setting is missing or malformed; raised once, at start
    └── EnqueueError       Redis could not take the goal in time; nothing enqueued

Lower-layer errors (redis-py, marshmallow) are translated once, at the edge, with
``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class GoalQueueError(Exception):
    """Root of every error goalqueue raises on purpose."""


class InvalidGoal(GoalQueueError, ValueError):
    """A goal event that DataFast would refuse; ``errors`` maps each bad field to its reasons."""

    def __init__(self, errors: Mapping[str, Sequence[str]]) -> None:
        self.errors: dict[str, list[str]] = {field: list(why) for field, why in errors.items()}
        detail = "; ".join(f"{field}: {', '.join(why)}" for field, why in self.errors.items())
        super().__init__(f"invalid goal: {detail}")


class ConfigError(GoalQueueError):
    """A setting is missing or has a value that cannot work."""


class EnqueueError(GoalQueueError):
    """The goal could not be handed to Redis; it was not enqueued."""
