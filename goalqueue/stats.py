"""What ``goalqueue stats`` reports, and ``goalqueue metrics`` exports: the deployment's state,
read from Redis.

Nothing here reads in a MULTI: Redis refuses every MULTI once it is at ``maxmemory``, which is
exactly when an operator needs these figures. The state is one script flagged ``no-writes``
(``lua/state.lua``: one instant, and Redis runs it when full), Redis's memory comes from
``INFO memory`` (``redis_full``: whether Redis refuses new memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from goalqueue import message
from goalqueue.event import GoalEvent
from goalqueue.keys import Keys
from goalqueue.pausing import HandPause
from goalqueue.scripts import Scripts

# Redis counts as full within 1/FULL_MARGIN of its maxmemory.
FULL_MARGIN = 100
# Dead letters in no reason's index: kept by a goalqueue from before the indexes, or written by
# hand. `goalqueue dead recount` indexes them.
UNINDEXED = "unindexed"


@dataclass(frozen=True)
class Memory:
    """Redis's memory as ``maxmemory`` counts it, and its limit (0: none)."""

    used: int
    limit: int

    @property
    def full(self) -> bool:
        """Whether Redis is full: within 1% of ``maxmemory``. With ``noeviction`` Redis refuses
        a write that arrives with less room than it needs, and reports a little less than the
        limit right after, so a full Redis rarely shows more than its limit."""
        return self.limit > 0 and self.used >= self.limit - self.limit // FULL_MARGIN


def memory(client: redis.Redis) -> Memory | None:
    """Redis's memory, or None when the server will not say (an ACL user without INFO,
    fakeredis)."""
    try:
        info = client.info("memory")
    except redis.ResponseError:
        return None
    # What Redis compares with maxmemory leaves out its replication and AOF buffers.
    used = int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))
    return Memory(used, int(info.get("maxmemory", 0)))


def collect(client: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, Any]:
    """Counts of goals by state, DataFast's pause, the pause by hand (while in force), the
    shared send rate, the ages of the oldest waiting goal and of the goal next in line on the
    queue, and Redis's memory."""
    now = time.time() if now is None else now
    (
        queued, waiting, ledger, delivered, dead, paused_until, pause_reason, first_waiting,
        next_up, rate, *hand_fields,
    ) = Scripts(client, keys).state()  # fmt: skip
    hand = HandPause.of(hand_fields)
    used = memory(client)
    return {
        "queued": queued,
        "waiting": waiting,
        "in_flight": max(0, ledger - queued),
        "delivered": int(delivered or 0),
        "dead": dead,
        "paused_until": float(paused_until) if paused_until else None,
        "pause_reason": pause_reason,
        "paused_by_hand": hand.as_dict() if hand is not None and hand.in_force(now) else None,
        "oldest_waiting_age": _age([first_waiting] if first_waiting else [], now),
        "oldest_queued_age": _age(_entry(client, keys, next_up), now),
        "send_rate": round(float(rate), 3) if rate else None,
        "redis_used_memory": used.used if used else None,
        "redis_maxmemory": used.limit if used else None,
        "redis_full": used.full if used else None,
    }


def dead_by_reason(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """How many dead letters there are for each reason (``tally.LETTER_REASONS``), and
    ``unindexed``: the sizes of the reasons' indexes, read at one instant, never the letters."""
    total, counts = Scripts(client, keys).dead_counts()
    return counts | {UNINDEXED: max(0, total - sum(counts.values()))}


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
