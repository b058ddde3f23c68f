"""Delivered markers: which goals reached DataFast, when, and under which DataFast event id.

A marker says that a goal was delivered: while it lives (``GOALQUEUE_DELIVERED_TTL_SECONDS``,
24 h by default, and at most a sixth more), an enqueue of the same event id adds nothing and a
queued copy of the goal is dropped without being sent. The worker's SETTLE writes a marker in
the call that records the delivery; ENQUEUE and TAKE look them up. All of them share
``lua/marker.lua``, which keeps markers packed in time-bucketed, sharded hashes small enough for
Redis's listpack encoding: about 40 B a delivered goal, where one string key a goal took 260.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

from goalqueue.keys import Keys
from goalqueue.scripts import ScriptArg, source


@dataclass(frozen=True, slots=True)
class Marker:
    """A delivered goal: when (unix time) and DataFast's event id ('' if not kept)."""

    event_id: str
    delivered_at: float
    remote_id: str


class Markers:
    """Read and write delivered markers on a blocking client, for the namespace of ``keys``."""

    def __init__(self, client: Redis, keys: Keys) -> None:
        self.keys = keys
        self._marked = client.register_script(source("marked", "marker"))
        self._mark = client.register_script(source("mark", "marker"))

    def find(self, event_ids: Sequence[str]) -> dict[str, Marker]:
        """The live markers of these event ids, by event id."""
        if not event_ids:
            return {}
        replies = self._marked(keys=[self.keys.delivered], args=list(event_ids))
        found = {}
        for i, event_id in enumerate(event_ids):
            at, remote = replies[2 * i], replies[2 * i + 1]
            if at is not None:
                remote_id = remote.decode() if isinstance(remote, bytes) else str(remote)
                found[event_id] = Marker(event_id, int(at) / 1000, remote_id)
        return found

    def get(self, event_id: str) -> Marker | None:
        return self.find([event_id]).get(event_id)

    def mark(self, delivered: Sequence[tuple[str, str]], ttl_seconds: float) -> int:
        """Mark ``(event id, DataFast's event id)`` pairs delivered now, for ``ttl_seconds``
        (as GOALQUEUE_DELIVERED_TTL_SECONDS), unless marked already; returns how many were
        new. For goals delivered by other means (an import, a test): workers mark their own."""
        args: list[ScriptArg] = [int(ttl_seconds * 1000)]
        for event_id, remote_id in delivered:
            args += (event_id, remote_id)
        return int(self._mark(keys=[self.keys.delivered], args=args))
