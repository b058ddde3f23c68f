"""Task messages on the queue, taken as kombu's BRPOP would."""

from __future__ import annotations

import json
from typing import cast

import redis

from tests.helpers.settings import KEYS


def pop_message(client: redis.Redis) -> tuple[str, int]:
    """Take the next task message off the queue as kombu's BRPOP would; returns what the task
    delivers: its id (the event id) and its argument (the sequence)."""
    raw = client.rpop(KEYS.queue)
    assert raw is not None, "the queue is empty"
    message = json.loads(cast(str | bytes, raw))
    (seq,) = json.loads(message["body"])[0]
    return message["headers"]["id"], seq
