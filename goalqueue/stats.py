"""What ``goalqueue stats`` reports, read in one round trip."""

from __future__ import annotations

import time
from typing import Any

import redis

from goalqueue.event import GoalEvent
from goalqueue.keys import Keys


def collect(client: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, Any]:
    """Counts of goals by state, the pause, and the age of the oldest waiting goal."""
    now = time.time() if now is None else now
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(keys.queue)
        pipe.zcard(keys.waiting)
        pipe.zcard(keys.ledger)
        pipe.get(keys.delivered_count)
        pipe.hlen(keys.dead)
        pipe.hmget(keys.pause, "until", "reason")
        pipe.zrange(keys.waiting, 0, 0)
        queued, waiting, ledger, delivered, dead, pause, first_waiting = pipe.execute()
    paused_until, pause_reason = pause
    return {
        "queued": queued,
        "waiting": waiting,
        "in_flight": max(0, ledger - queued),
        "delivered": int(delivered or 0),
        "dead": dead,
        "paused_until": float(paused_until) if paused_until else None,
        "pause_reason": pause_reason,
        "oldest_waiting_age": _age(first_waiting, now),
    }


def _age(first_waiting: list[str], now: float) -> float | None:
    """Seconds since the earliest-due waiting goal was enqueued."""
    if not first_waiting:
        return None
    try:
        return round(now - GoalEvent.from_json(first_waiting[0]).enqueued_at, 3)
    except ValueError:
        return None
