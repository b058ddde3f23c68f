"""goalqueue's worker with kombu's Redis channel reusing one client for its bookkeeping.

kombu 5.7 builds a new ``redis.Redis`` object for every unacked-bookkeeping call
(``Channel.conn_or_acquire`` without a client), and redis-py 8 fills a case-insensitive dict
of response callbacks on every construction. Here each channel keeps one client (thread-safe:
commands take a connection from the channel's pool).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

from workers.celery import app


@contextmanager
def _conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    cached = self.__dict__.get("_reused_client")
    if cached is None:
        cached = self.__dict__["_reused_client"] = self._create_client()
    yield cached


kombu_redis.Channel.conn_or_acquire = _conn_or_acquire

__all__ = ["app"]
