"""What ``goalqueue stats`` reports, and ``goalqueue metrics`` exports: the deployment's state,
read from Redis."""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import redis

from goalqueue import message
from goalqueue.event import GoalEvent
from goalqueue.keys import PER_CALL, Keys

# A dead letter's reason, read without decoding the letter (it is written as compact JSON).
_REASON = re.compile(r'"reason":"([a-z_]+)"')


def collect(client: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, Any]:
    """Counts of goals by state, the pause, the shared send rate, and the ages of the oldest
    waiting goal and of the goal next in line on the queue."""
    now = time.time() if now is None else now
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(keys.queue)
        pipe.zcard(keys.waiting)
        pipe.zcard(keys.ledger)
        pipe.get(keys.delivered_count)
        pipe.hlen(keys.dead)
        pipe.hmget(keys.pause, "until", "reason")
        pipe.zrange(keys.waiting, 0, 0)
        pipe.lindex(keys.queue, -1)
        pipe.hget(keys.pace, "rate")
        queued, waiting, ledger, delivered, dead, pause, first_waiting, next_up, rate = (
            pipe.execute()
        )
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
        "oldest_queued_age": _age(_entry(client, keys, next_up), now),
        "send_rate": round(float(rate), 3) if rate else None,
    }


def dead_by_reason(client: redis.Redis, keys: Keys) -> Counter[str]:
    """How many dead letters there are for each reason (a scan of every letter)."""
    reasons: Counter[str] = Counter()
    for _, letter in client.hscan_iter(keys.dead, count=PER_CALL):
        found = _REASON.search(letter)
        reasons[found.group(1) if found else "unknown"] += 1
    return reasons


def _entry(client: redis.Redis, keys: Keys, raw: str | None) -> list[str]:
    """The ledger entry of the goal whose task message is ``raw`` (none: empty)."""
    if raw is None:
        return []
    try:
        _, seq = message.read(raw)
    except (ValueError, KeyError, TypeError, IndexError):
        return []
    return [str(entry) for entry in client.zrangebyscore(keys.ledger, seq, seq)]


def _age(entries: list[str], now: float) -> float | None:
    """Seconds since the goal of the first of ``entries`` was enqueued."""
    if not entries:
        return None
    try:
        return round(now - GoalEvent.from_json(entries[0]).enqueued_at, 3)
    except ValueError:
        return None
