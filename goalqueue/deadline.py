"""The enqueue deadline: every wait of a blocking enqueue ends by one point in time.

``GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS`` is a deadline for the whole enqueue, not a timeout per
socket call: redis-py applies its timeouts step by step (connect, each handshake reply, the script
call, and after NOSCRIPT a SCRIPT LOAD and a second call) and by default may retry, so per-step
timeouts alone let a slow Redis hold a request for several times the setting. The connections
made by :func:`connect` cut every step to what is left of the deadline, and redis-py's retries
are off: the spool is the retry. (Name resolution is the one wait the deadline cannot cut: use an
IP address or a local resolver for the broker.)

A :class:`Deadline` also remembers whether a command went out on the wire: an error before that
means Redis never saw the goals, after it that it may have run them.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from goalqueue import connections
from goalqueue.config import Settings

# A socket timeout is cut (a system call) only when the deadline is nearer than the one it has
# by more than this; so a request waits at most this much past the deadline.
SLACK_SECONDS = 0.05
# Redis notices that a WAIT timed out on its next event-loop pass, up to 1/hz (100 ms) late.
WAIT_REPLY_MARGIN = 0.15


@dataclass(slots=True)
class Deadline:
    """When the enqueue in progress must end, and whether a command went out; as a context
    manager, the enqueue in progress (see :func:`deadline`)."""

    at: float
    sent: bool = False
    _token: Token[Deadline | None] | None = None

    def left(self) -> float:
        """Seconds left; raises :class:`redis.TimeoutError` once none is."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise redis.TimeoutError("the enqueue timeout ran out")
        return left

    def wait_ms(self) -> int:
        """WAIT's timeout: what is left, less time for the reply (never 0: forever)."""
        left = self.left()
        return max(1, int((left - max(left / 10, WAIT_REPLY_MARGIN)) * 1000))

    def __enter__(self) -> Deadline:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)


_CURRENT: ContextVar[Deadline | None] = ContextVar("goalqueue_enqueue_deadline", default=None)


def deadline(seconds: float) -> Deadline:
    """``with deadline(seconds) as current:`` every wait on a connection made by
    :func:`connect` ends within ``seconds`` from now."""
    return Deadline(time.monotonic() + seconds)


def connect(settings: Settings) -> redis.Redis:
    """A blocking client for the broker: the enqueue timeout on every socket operation, no
    retries, and every wait cut short by the deadline of an enqueue in progress."""
    timeout = settings.enqueue_timeout_seconds
    return connections.client(
        settings,
        pool_wait=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        connection_class=_with_deadline(connections.connection_class(settings)),
    )


class _DeadlineMixin:
    """A redis-py connection whose connect, send and read each wait at most until the deadline.

    A connection that runs out of time between sending and reading is dropped, so no late reply
    is left for the next command to read.
    """

    socket_timeout: float | None
    socket_connect_timeout: float | None
    _sock: Any
    _cut_to: float | None = None

    def _connect(self) -> socket.socket:
        configured = self.socket_connect_timeout
        current = _CURRENT.get()
        if current is not None:
            self.socket_connect_timeout = min(configured or math.inf, current.left())
        try:
            sock: socket.socket = super()._connect()  # type: ignore[misc]
        finally:
            self.socket_connect_timeout = configured
        self._cut_to = self.socket_timeout
        return sock

    def connect(self) -> None:
        if self._sock is None:  # redis-py wraps even a connected one's check in its retries
            super().connect()  # type: ignore[misc]

    def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        with _handshake():
            super().connect_check_health(*args, **kwargs)  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._cut_socket_timeout()
        super().send_packed_command(command, check_health)  # type: ignore[misc]
        if (current := _CURRENT.get()) is not None:
            current.sent = True

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self._cut_socket_timeout()
        return super().read_response(*args, **kwargs)  # type: ignore[misc]

    def _cut_socket_timeout(self) -> None:
        """The socket's timeout: what is left of the deadline, within :data:`SLACK_SECONDS`
        (so that most calls need no system call to set it)."""
        if self._sock is None:
            return
        wanted = self.socket_timeout
        if (current := _CURRENT.get()) is not None:
            try:
                left = current.left()
            except redis.TimeoutError:
                self.disconnect()  # type: ignore[attr-defined]
                raise
            wanted = left if wanted is None else min(wanted, left)
        if wanted is None or self._cut_to is None or abs(wanted - self._cut_to) > SLACK_SECONDS:
            self._sock.settimeout(wanted)
            self._cut_to = wanted


@contextmanager
def _handshake() -> Iterator[None]:
    """A connection's handshake (HELLO, AUTH, SELECT): what it sends is not the command."""
    current = _CURRENT.get()
    sent = current is not None and current.sent
    try:
        yield
    finally:
        if current is not None:
            current.sent = sent


@cache
def _with_deadline(base: type) -> type:
    """``base`` (plain, TLS, unix socket, or Sentinel-managed) whose every wait ends by the
    deadline."""
    return type(f"Deadline{base.__name__}", (_DeadlineMixin, base), {})


class _SentMixin:
    """A ``redis.asyncio`` connection that marks the deadline's command as sent as soon as it
    starts writing it (its deadline is an ``asyncio.timeout`` around the whole call)."""

    async def connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        with _handshake():
            await super().connect_check_health(*args, **kwargs)  # type: ignore[misc]

    async def _send_packed_command(self, command: Any) -> None:
        if (current := _CURRENT.get()) is not None:
            current.sent = True
        await super()._send_packed_command(command)  # type: ignore[misc]


def async_connection_class(settings: Settings) -> type:
    """The ``redis.asyncio`` connection class for the broker URL, marking what it sends."""
    return _with_sent(connections.async_connection_class(settings))


@cache
def _with_sent(base: type) -> type:
    return type(f"Marking{base.__name__}", (_SentMixin, base), {})
