"""Every Redis client goalqueue makes, in one place: the producer's, the CLI's, the workers'."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from goalqueue.config import Settings

if TYPE_CHECKING:
    import redis.asyncio


def client(settings: Settings, **options: Any) -> redis.Redis:
    """A blocking client for the broker, answers decoded; ``options`` go to redis-py."""
    return redis.Redis.from_url(settings.broker_url, decode_responses=True, **options)


def async_client(settings: Settings) -> redis.asyncio.Redis:
    """A client for a worker's event loop, answers decoded."""
    import redis.asyncio  # only workers need asyncio's client

    return redis.asyncio.Redis.from_url(settings.broker_url, decode_responses=True)
