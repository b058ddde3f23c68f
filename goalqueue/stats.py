"""What ``goalqueue stats`` reports, read in one round trip."""

from __future__ import annotations

import time
from typing import Any

import redis

from goalqueue import keys
from goalqueue.event import GoalEvent


def collect(client: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """Counts of goals by state, the pause, and the age of the oldest waiting goal."""
    now = time.time() if now is None else now
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(keys.QUEUE)
        pipe.zcard(keys.WAITING)
        pipe.zcard(keys.LEDGER)
        pipe.get(keys.DELIVERED_COUNT)
        pipe.hlen(keys.DEAD)
        pipe.hmget(keys.PAUSE, "until", "reason")
        pipe.zrange(keys.WAITING, 0, 0)
        queued, scheduled, ledger, delivered, dead, pause, first_waiting = pipe.execute()
    paused_until, pause_reason = pause
    return {
        "queued": queued,
        "scheduled": scheduled,
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
