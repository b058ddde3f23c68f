"""Every Redis client goalqueue makes, in one place: the producer's, the CLI's, the workers'.

With a ``sentinel://`` broker URL (see :mod:`goalqueue.sentinel`) each client asks the sentinels
for the current master whenever it opens a connection, and a connection that finds the old
master gone or demoted (a failover) is dropped, so the next command goes to the new one: no
restart is needed. Replicas are never read from: goalqueue's state must be read where it is
written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.sentinel
from redis.connection import parse_url

from goalqueue.config import Settings
from goalqueue.urls import redact

if TYPE_CHECKING:
    import redis.asyncio

# redis-py's URL parser, typed (redis-py's is not annotated).
_parse_url: Callable[[str], dict[str, Any]] = parse_url
# Connections a producer's client keeps open at most: calls beyond that many at once wait for one.
POOL_SIZE = 64
# Options that also apply to the client's connections to the sentinels themselves.
_SENTINEL_SOCKET_OPTIONS = ("socket_timeout", "socket_connect_timeout")


def client(settings: Settings, *, pool_wait: float | None = None, **options: Any) -> redis.Redis:
    """A blocking client for the broker, answers decoded; ``options`` go to redis-py.

    With ``pool_wait``, a call that finds all :data:`POOL_SIZE` connections in use waits up to
    that long for one (a producer's threads or greenlets), where redis-py's default pool would
    fail it at once (behind Sentinel: its pool, failing at once).
    """
    if settings.sentinel is None and pool_wait is not None:
        pool = redis.BlockingConnectionPool.from_url(
            settings.broker_url,
            decode_responses=True,
            max_connections=POOL_SIZE,
            timeout=pool_wait,
            **options,
        )
        return redis.Redis(connection_pool=pool)
    if settings.sentinel is None:
        return redis.Redis.from_url(settings.broker_url, decode_responses=True, **options)
    manager = redis.sentinel.Sentinel(**_sentinel_kwargs(settings, options))
    master: redis.Redis = manager.master_for(_master(settings), decode_responses=True, **options)
    return master


def async_client(
    settings: Settings, *, pool_wait: float | None = None, **options: Any
) -> redis.asyncio.Redis:
    """A client for an event loop (a worker's, an asyncio web app's), answers decoded;
    ``options`` go to redis-py; ``pool_wait`` as for :func:`client`."""
    import redis.asyncio  # a web app that only uses the blocking client never loads asyncio's
    import redis.asyncio.sentinel

    if settings.sentinel is None and pool_wait is not None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.broker_url,
            decode_responses=True,
            max_connections=POOL_SIZE,
            timeout=pool_wait,
            **options,
        )
        return redis.asyncio.Redis(connection_pool=pool)
    if settings.sentinel is None:
        return redis.asyncio.Redis.from_url(settings.broker_url, decode_responses=True, **options)
    manager = redis.asyncio.sentinel.Sentinel(**_sentinel_kwargs(settings, options))
    master: redis.asyncio.Redis = manager.master_for(
        _master(settings), decode_responses=True, **options
    )
    return master


def text(reply: bytes | str | None) -> str:
    """A reply as text, whether its client decodes replies or not ('' for none)."""
    return reply.decode() if isinstance(reply, bytes) else (reply or "")


def call(client: redis.Redis, *args: str | int | float) -> Any:
    """One command on a connection of ``client``'s pool, its reply decoded as the client's are:
    for the producer's one-goal ENQUEUE, where redis-py's own path for a command (a retry
    wrapper, response callbacks, per-call metrics) costs about as much as the rest of the
    call's Python. The pool's checks of the connection it hands out, and the connection's
    writing, reading and dropping after an error, are redis-py's as ever."""
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        connection.send_command(*args)
        return connection.read_response()
    except (redis.ConnectionError, redis.TimeoutError):
        connection.disconnect()
        raise
    finally:
        pool.release(connection)


def explain(exc: redis.RedisError, settings: Settings) -> str:
    """What went wrong talking to the broker, in one line that names it (never its password)
    and, for a password problem, says what to fix."""
    where = f"Redis at {redact(settings.broker_url)}"
    if isinstance(exc, redis.AuthenticationError):
        if not _has_password(settings.broker_url):
            return (
                f"{where} asks for a password: put it in GOALQUEUE_BROKER_URL "
                "(redis://:PASSWORD@host:6379/0, or redis://USER:PASSWORD@... for an ACL user)"
            )
        return f"{where} refused the user or password in GOALQUEUE_BROKER_URL ({exc})"
    if isinstance(exc, redis.TimeoutError):
        return f"{where} did not answer in time ({exc})"
    what = "unreachable" if isinstance(exc, redis.ConnectionError) else "refused the command"
    return f"{where} {what} ({type(exc).__name__}: {exc})"


def connection_class(settings: Settings) -> type:
    """The redis-py connection class the broker URL calls for."""
    sentinel = settings.sentinel
    if sentinel is None:
        base: type = _parse_url(settings.broker_url).get("connection_class", redis.Connection)
        return base
    if sentinel.tls:
        return redis.sentinel.SentinelManagedSSLConnection
    return redis.sentinel.SentinelManagedConnection


def async_connection_class(settings: Settings) -> type:
    """The ``redis.asyncio`` connection class the broker URL calls for."""
    import redis.asyncio.connection as aio
    import redis.asyncio.sentinel as aio_sentinel

    sentinel = settings.sentinel
    if sentinel is None:
        parsed: type = aio.parse_url(settings.broker_url).get("connection_class", aio.Connection)
        return parsed
    if sentinel.tls:
        return aio_sentinel.SentinelManagedSSLConnection
    return aio_sentinel.SentinelManagedConnection


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """Options for the connections to the sentinels themselves: their password, and TLS when
    the master's connections use it (kombu's ``sentinel_kwargs`` transport option too)."""
    sentinel = settings.sentinel
    options: dict[str, Any] = {}
    if sentinel is None:
        return options
    if settings.sentinel_password:
        options["password"] = settings.sentinel_password
    if sentinel.tls:
        options.update(sentinel.tls, ssl=True)
    return options


def _has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url.split(";")[0]).password)
    except ValueError:
        return False


def _sentinel_kwargs(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    """``Sentinel(...)``'s arguments. A sentinel that does not answer costs at most its share
    of the socket timeouts in ``options``, so that asking all of them stays within one."""
    sentinel = settings.sentinel
    assert sentinel is not None
    own = sentinel_options(settings)
    for name in _SENTINEL_SOCKET_OPTIONS:
        if options.get(name) is not None:
            own[name] = options[name] / len(sentinel.sentinels)
    return {
        "sentinels": list(sentinel.sentinels),
        "sentinel_kwargs": own,
        **sentinel.connection_kwargs(),
    }


def _master(settings: Settings) -> str:
    assert settings.sentinel_master is not None  # Settings refuses a sentinel URL without it
    return settings.sentinel_master
