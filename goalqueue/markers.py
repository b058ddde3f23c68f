"""Delivered markers: which goals reached DataFast, when, and under which DataFast event id.

A marker says that a goal was delivered: while it lives (``GOALQUEUE_DELIVERED_TTL_SECONDS``,
24 h by default, and at most a sixth more), an enqueue of the same event id adds nothing and a
queued copy of the goal is dropped without being sent. The worker's SETTLE writes a marker in
the call that records the delivery; ENQUEUE and TAKE look them up. All of them share
``lua/marker.lua``, which keeps markers packed in time-bucketed, sharded hashes small enough for
Redis's listpack encoding: about 40 B a delivered goal, where one string key a goal took 260.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

from goalqueue.connections import text
from goalqueue.keys import PER_CALL, Keys
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
        self.redis = client
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
                found[event_id] = Marker(event_id, int(at) / 1000, text(remote))
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

    def adopt_legacy(self, default_ttl_seconds: float) -> int:
        """Pack the markers a goalqueue from before packed markers kept, one string key a goal
        (``<ns>:delivered:<event id>``, DataFast's id as its value), then delete those keys;
        returns how many. Each guards at least as long as it had left (``default_ttl_seconds``
        if it had no expiry). Safe while workers run: a goal is marked before its old key goes."""
        legacy = self.redis.scan_iter(
            match=f"{self.keys.delivered}:*", count=PER_CALL, _type="STRING"
        )
        adopted, prefix = 0, len(self.keys.delivered) + 1
        while chunk := list(itertools.islice(legacy, PER_CALL)):
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.get(key)
                pipe.pttl(key)
            replies = pipe.execute()
            found = [
                (text(key)[prefix:], text(value), ttl_ms)
                for key, value, ttl_ms in zip(chunk, replies[::2], replies[1::2], strict=True)
                if ttl_ms != -2
            ]
            if not found:
                continue
            longest = max(default_ttl_seconds * 1000 if ttl < 0 else ttl for *_, ttl in found)
            self.mark([(event_id, remote) for event_id, remote, _ in found], longest / 1000)
            self.redis.delete(*chunk)
            adopted += len(found)
        return adopted
