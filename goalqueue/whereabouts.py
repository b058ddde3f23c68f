"""Where one goal is now, and what its attempts got: what ``goalqueue show`` reports.

A goal is, in the order looked for:

* ``queued``: in the ledger, with a sequence no worker has started on yet;
* ``in_flight``: in the ledger, at or below the highest sequence a worker has started on (the
  worker is named if the goal's attempt log knows who tried it last);
* ``waiting``: in the waiting set, until when, and why (its last attempt, or a hold);
* ``dead``: a dead letter (its reason, when it died);
* ``delivered``: a delivered marker (when, DataFast's event id);
* ``unknown``: none of these (never enqueued, or delivered longer ago than the markers live).

The ledger and the waiting set are found by a server-side scan for the goal's entry (``ZSCAN``
matching its id): quick for the thousands a healthy queue holds, a second or so for a backlog
of millions.

A visitor's goals come from the visitor index (a string per visitor of its newest goals, kept
:data:`~goalqueue.keys.VISITOR_WINDOW_SECONDS` after its last): those enqueued in the last hour,
each then located as above.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from goalqueue.attempts import Attempt
from goalqueue.connections import text
from goalqueue.deadletters import DeadLetter, DeadLetters
from goalqueue.event import GoalEvent
from goalqueue.keys import PER_CALL, VISITOR_WINDOW_SECONDS, Keys
from goalqueue.markers import Markers

_GLOB = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """One goal's state, what is known of it, and its attempts (oldest first)."""

    event_id: str
    state: str
    at: float | None = None  # delivered or died at
    until: float | None = None  # waiting until
    why: str = ""
    worker: str = ""
    remote_id: str = ""
    seq: int | None = None
    event: GoalEvent | None = None
    attempts: list[Attempt] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The stable ``--json`` form."""
        event = self.event
        return {
            "event_id": self.event_id,
            "state": self.state,
            "at": self.at,
            "until": self.until,
            "why": self.why,
            "worker": self.worker or None,
            "remote_id": self.remote_id or None,
            "seq": self.seq,
            "visitor_id": None if event is None else event.visitor_id,
            "name": None if event is None else event.name,
            "enqueued_at": None if event is None else event.enqueued_at,
            "attempts": [attempt.as_dict() for attempt in self.attempts],
        }


def canonical_id(text: str) -> str:
    """An event id as the queue stores it (a UUID in lowercase, or a poison letter's
    ``poison-<uuid>``); ``ValueError`` for anything else."""
    prefix = "poison-" if text.startswith("poison-") else ""
    return prefix + str(uuid.UUID(text.removeprefix(prefix)))


def locate(client: redis.Redis, keys: Keys, event_id: str) -> Whereabouts:
    """Where ``event_id`` is now (see the module's docstring)."""
    attempts = _attempts(client, keys, event_id)
    last = attempts[-1] if attempts else None
    worker = last.worker if last is not None else ""
    if client.sismember(keys.pending, event_id):
        found = _queued(client, keys, event_id, worker) or _waiting(client, keys, event_id, last)
        if found is not None:
            return _with(found, attempts)
    letter = DeadLetters(client, keys).get(event_id)
    if isinstance(letter, DeadLetter):
        found = Whereabouts(event_id, "dead", at=letter.dead_at, why=letter.reason,
                            worker=worker, event=letter.event)  # fmt: skip
        return _with(found, attempts)
    marker = Markers(client, keys).get(event_id)
    if marker is not None:
        found = Whereabouts(event_id, "delivered", at=marker.delivered_at,
                            remote_id=marker.remote_id, worker=worker)  # fmt: skip
        return _with(found, attempts)
    return _with(Whereabouts(event_id, "unknown", worker=worker), attempts)


def visits(client: redis.Redis, keys: Keys, visitor_id: str) -> list[tuple[float, Whereabouts]]:
    """``visitor_id``'s goals enqueued in the last hour, newest first (the visitor index keeps
    its last :data:`~goalqueue.keys.VISITOR_KEEP`): when each was enqueued, and where it is
    now."""
    since = time.time() - VISITOR_WINDOW_SECONDS
    goals = []
    records = text(client.get(keys.visitor(visitor_id))).split(";")
    for record in reversed(records[:-1]):
        at, _, event_id = record.partition(" ")
        if float(at) >= since:
            goals.append((float(at), event_id))
    return [(enqueued, locate(client, keys, event_id)) for enqueued, event_id in goals]


def _with(found: Whereabouts, attempts: list[Attempt]) -> Whereabouts:
    found.attempts.extend(attempts)
    return found


def _attempts(client: redis.Redis, keys: Keys, event_id: str) -> list[Attempt]:
    found = []
    for raw in client.lrange(keys.attempts(event_id), 0, -1):
        try:
            found.append(Attempt.from_json(raw))
        except ValueError:
            continue
    return found


def _entry(client: redis.Redis, key: str, event_id: str) -> tuple[str, float] | None:
    """The member of the zset ``key`` that is ``event_id``'s stored event, and its score."""
    pattern = '{"i":"' + _GLOB.sub(r"\\\1", event_id) + '"*'
    for member, score in client.zscan_iter(key, match=pattern, count=PER_CALL):
        return text(member), float(score)
    return None


def _queued(client: redis.Redis, keys: Keys, event_id: str, worker: str) -> Whereabouts | None:
    found = _entry(client, keys.ledger, event_id)
    if found is None:
        return None
    entry, seq = found
    taken = int(client.get(keys.taken) or 0)
    state = "in_flight" if seq <= taken else "queued"
    return Whereabouts(event_id, state, seq=int(seq), worker=worker, event=_event(entry))


def _waiting(
    client: redis.Redis, keys: Keys, event_id: str, last: Attempt | None
) -> Whereabouts | None:
    found = _entry(client, keys.waiting, event_id)
    if found is None:
        return None
    entry, due = found
    event = _event(entry)
    if last is not None:
        why = f"{last.decision}: {last.why}" if last.why else last.decision
    elif event is not None and event.attempts:
        why = f"after status {event.last_status or event.last_error}"
    else:
        why = "held (delivery paused or paced)"
    worker = "" if last is None else last.worker
    return Whereabouts(event_id, "waiting", until=due, why=why, worker=worker, event=event)


def _event(entry: str) -> GoalEvent | None:
    try:
        return GoalEvent.from_json(entry)
    except ValueError:
        return None
