"""Every Redis key goalqueue uses, in one place.

goalqueue                     list    the Celery queue (kombu's Redis transport, priority 0)
goalqueue:seq                 string  last enqueue sequence number handed out
goalqueue:ledger              zset    event JSON scored by its enqueue sequence; an entry lives
                                      from enqueue until a final outcome or a deferral
goalqueue:taken               string  highest sequence any worker has started on
goalqueue:checkpoints         zset    taken values scored by when they were first seen
goalqueue:waiting             zset    event JSON scored by the unix time it is due again
goalqueue:dead                hash    event id -> dead letter JSON
goalqueue:delivered:<id>      string  DataFast's event id for a delivered goal (with a TTL)
goalqueue:count:delivered     string  goals delivered, ever
goalqueue:pause               hash    until, reason, streak, key: delivery paused for everyone
goalqueue:probe               string  id of the one event allowed through when a pause ends
goalqueue:pace                hash    rate, tokens, at, ceiling, grown, dry: the shared send rate
                                      (a token bucket) after a 429, or under GOALQUEUE_MAX_RATE
goalqueue:sent                hash    since, count, recent: goals sent by all workers, counted a
                                      second at a time (a first 429's rate to start from)
"""

from __future__ import annotations

QUEUE = "goalqueue"
SEQ = "goalqueue:seq"
LEDGER = "goalqueue:ledger"
TAKEN = "goalqueue:taken"
CHECKPOINTS = "goalqueue:checkpoints"
WAITING = "goalqueue:waiting"
DEAD = "goalqueue:dead"
DELIVERED_COUNT = "goalqueue:count:delivered"
PAUSE = "goalqueue:pause"
PROBE = "goalqueue:probe"
PACE = "goalqueue:pace"
SENT = "goalqueue:sent"

DELIVERED_PREFIX = "goalqueue:delivered:"

TASK_NAME = "goalqueue.deliver"


def delivered(event_id: str) -> str:
    """Key of the marker that says ``event_id`` reached DataFast."""
    return DELIVERED_PREFIX + event_id
