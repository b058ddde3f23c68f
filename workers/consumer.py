"""Celery's consumer, with undecodable messages kept as dead letters instead of dropped."""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from goalqueue import keys
from goalqueue.deadletters import DeadLetter

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Keep the raw message as a ``poison`` dead letter, then ack it so it cannot loop."""
        from workers.celery import runtime

        letter = DeadLetter.poison(message.body or b"", f"undecodable message: {exc}")
        runtime.get().redis.hset(keys.DEAD, letter.event_id, letter.to_json())
        logger.error("dead-lettered an undecodable message as %s: %s", letter.event_id, exc)
        message.ack()
