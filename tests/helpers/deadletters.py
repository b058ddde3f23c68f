"""Dead letters made as the workers make them: through SETTLE, which writes each letter with its
index entry."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import redis

from goalqueue import GoalQueue
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.keys import Keys
from tests.helpers.settings import KEYS
from workers.scripts import Settlement, SweeperScripts


def settle(
    client: redis.Redis, letters: Iterable[tuple[str, DeadLetter]], keys: Keys = KEYS
) -> int:
    """Dead-letter each ``(ledger entry, letter)`` in one SETTLE, as a worker does (entry '':
    as poison, none); returns how many entries it owned."""
    settlement = Settlement()
    for entry, letter in letters:
        settlement.bury(entry, letter)
    return SweeperScripts(client, keys).settle(settlement, marker_ttl_ms=60_000)


def kill(
    client: redis.Redis, queue: GoalQueue, visitor: str = "v", name: str = "signup", **how: Any
) -> str:
    """Enqueue a goal and dead-letter it as :func:`die` does; returns its event id."""
    event_id = queue.track_goal(visitor, name)
    die(client, event_id, **how)
    return event_id


def die(
    client: redis.Redis,
    event_id: str,
    *,
    status: int | None = 404,
    reason: str = "unknown_visitor",
    dead_at: float | None = None,
    enqueued_at: float | None = None,
) -> None:
    """Take a queued goal's message off the queue and dead-letter it after one more attempt
    answered ``status``, as a worker would."""
    (entry,) = [e for e in client.zrange(KEYS.ledger, 0, -1) if event_id in e]
    (message,) = [m for m in client.lrange(KEYS.queue, 0, -1) if event_id in m]
    client.lrem(KEYS.queue, 1, message)
    event = GoalEvent.from_json(entry)
    if enqueued_at is not None:
        event = replace(event, enqueued_at=enqueued_at)
    event = event.attempted(time.time(), status, None if status is None else f"HTTP {status}")
    letter = DeadLetter.of(event, reason)
    if dead_at is not None:
        letter = replace(letter, dead_at=dead_at)
    assert settle(client, [(entry, letter)]) == 1
