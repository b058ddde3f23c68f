"""Delivered markers, read and written as the scripts do (see goalqueue/markers.py)."""

from __future__ import annotations

import redis

from goalqueue.keys import Keys
from goalqueue.markers import Marker, Markers
from tests.helpers.settings import KEYS

DAY = 86400.0


def marker(client: redis.Redis, event_id: str, keys: Keys = KEYS) -> Marker | None:
    """``event_id``'s live delivered marker, if any."""
    return Markers(client, keys).get(event_id)


def mark(client: redis.Redis, event_id: str, remote_id: str = "", keys: Keys = KEYS) -> int:
    """Mark ``event_id`` delivered (for a day), as a worker that delivered it would."""
    return Markers(client, keys).mark([(event_id, remote_id)], DAY)
