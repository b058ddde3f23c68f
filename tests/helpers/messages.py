"""Task messages on the queue, taken as kombu's BRPOP would."""

from __future__ import annotations

from typing import cast

import redis

from goalqueue import message
from tests.helpers.settings import KEYS


def pop_message(client: redis.Redis) -> tuple[str, int]:
    """Take the next task message off the queue as kombu's BRPOP would; returns what the task
    delivers: its id (the event id) and its argument (the sequence)."""
    raw = client.rpop(KEYS.queue)
    assert raw is not None, "the queue is empty"
    return message.read(cast(str | bytes, raw))
