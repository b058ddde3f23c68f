"""The web app's side: validate a goal, stamp it, enqueue it in one Redis round trip.

``track_goal`` never holds a request for longer than ``GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS``
waiting for Redis. That timeout is a deadline for the whole enqueue, not a timeout per socket
call: redis-py applies its timeouts step by step (connect, each handshake reply, the script
call, and after NOSCRIPT a SCRIPT LOAD and a second call) and by default may retry, so per-step
timeouts alone let a slow Redis hold a request for several times the setting. Our connections
cut every step to what is left of the deadline, and redis-py's retries are off: the spool is the
retry. (Name resolution is the one wait the deadline cannot cut: use an IP address or a local
resolver for the broker.)

Behind Sentinel (``GOALQUEUE_MIN_REPLICAS``, default 1 there) the enqueue script is followed,
in the same round trip, by ``WAIT`` for that many replicas, within the same deadline: a goal
is acknowledged only once a failover can no longer lose it. The connections then come from a
Sentinel-managed pool (``connection_class=`` carries the deadline into it), which asks the
sentinels for the current master whenever it connects.

When Redis cannot take a goal in time, it goes to the local spool if ``GOALQUEUE_SPOOL_DIR`` is
set (see :mod:`goalqueue.spool`); otherwise :class:`EnqueueError` is raised.
"""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from functools import cache
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from goalqueue import connections
from goalqueue.config import Settings, get_settings
from goalqueue.errors import ConfigError, EnqueueError, InvalidGoal
from goalqueue.event import GoalEvent
from goalqueue.keys import PER_CALL
from goalqueue.schema import validate_goal
from goalqueue.scripts import Scripts
from goalqueue.spool import Backlog, Spool
from goalqueue.urls import redact


def connect(settings: Settings) -> redis.Redis:
    """A Redis client for the broker: the enqueue timeout on every socket operation, no retries,
    and every wait cut short by the deadline of an enqueue in progress."""
    timeout = settings.enqueue_timeout_seconds
    return connections.client(
        settings,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        connection_class=_with_deadline(connections.connection_class(settings)),
    )


class GoalQueue:
    """Enqueues goal events for delivery to DataFast.

    ``GoalQueue()`` reads the broker from ``GOALQUEUE_BROKER_URL``; ``GoalQueue(broker_url=...)``
    sets it explicitly.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        settings = settings or get_settings()
        if broker_url is not None:
            settings = replace(settings, broker_url=broker_url)
        self.settings = settings
        self.redis = client or connect(settings)
        self._owns_redis = client is None
        self.scripts = Scripts(self.redis, settings.keys)
        self.backlog = _open_backlog(settings, self)

    def track_goal(
        self,
        visitor_id: str,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
    ) -> str:
        """Validate and enqueue one goal; returns its event id."""
        event = new_event(validate_goal(visitor_id, name, metadata, description))
        self._enqueue_or_spool([event])
        return event.event_id

    def track_goals(self, goals: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every goal, then enqueue them all in one round trip; returns their event ids.

        Each goal is a mapping with ``visitor_id`` and ``name`` and optionally ``metadata`` and
        ``description``. If any goal is invalid, none is enqueued, and :class:`InvalidGoal` names
        each bad field as ``[index].field``.
        """
        events, errors = [], {}
        for index, goal in enumerate(goals):
            try:
                events.append(new_event(validate_goal(**_goal_fields(goal))))
            except InvalidGoal as exc:
                errors.update({f"[{index}].{field}": why for field, why in exc.errors.items()})
        if errors:
            raise InvalidGoal(errors)
        self._enqueue_or_spool(events)
        return [event.event_id for event in events]

    def enqueue_events(self, events: Sequence[GoalEvent]) -> None:
        """Enqueue events that already carry their ids (replays use this); never spools."""
        self.enqueue_payloads([(event.event_id, event.to_json()) for event in events])

    def enqueue_payloads(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Enqueue stored ``(event id, event JSON)`` pairs byte for byte; never spools.

        The spool re-sends through this, so a re-sent goal matches its ledger entry exactly.
        Raises :class:`EnqueueError` when Redis does not take them within the enqueue timeout.
        """
        if not pairs:
            return
        try:
            with _deadline(self.settings.enqueue_timeout_seconds):
                self._enqueue(pairs)
        except redis.RedisError as exc:
            raise self._failure(exc, len(pairs)) from exc

    def _enqueue(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Enqueue in one round trip and, with ``GOALQUEUE_MIN_REPLICAS``, WAIT for that many
        replicas within the deadline.

        Redis replicates asynchronously: a master that dies right after taking a goal may not
        have passed it on, and the replica promoted in its place never saw it. Only a goal that
        replicas confirmed is reported enqueued; one they did not confirm in time counts as not
        enqueued (spooled, or :class:`EnqueueError`), even though the master has it: sent again,
        the same payload only re-scores its ledger entry, so it is still delivered once.
        """
        wanted = self.settings.replicas_to_wait_for
        if not wanted and len(pairs) <= PER_CALL:
            self.scripts.enqueue(pairs)
            return
        confirmed = self.scripts.enqueue_chunks(pairs, PER_CALL, wanted, _wait_ms)
        if confirmed < wanted:
            raise EnqueueError(
                f"could not enqueue {len(pairs)} goal(s): Redis at "
                f"{redact(self.settings.broker_url)} took them, but only {confirmed} of the "
                f"{wanted} replica(s) GOALQUEUE_MIN_REPLICAS asks for confirmed them within "
                f"{self.settings.enqueue_timeout_seconds:g} s; a failover could lose them"
            )

    def close(self) -> None:
        """Stop the spool flusher, if one runs, and close the Redis client it made."""
        if self.backlog is not None:
            self.backlog.close()
        if self._owns_redis:
            self.redis.close()

    def _enqueue_or_spool(self, events: list[GoalEvent]) -> None:
        backlog = self.backlog
        if backlog is None:
            self.enqueue_events(events)
            return
        if backlog.redis_down:  # do not wait out the timeout again: the flusher probes Redis
            backlog.keep(events)
            return
        try:
            self.enqueue_events(events)
        except EnqueueError as exc:
            backlog.keep(events, exc)
            return
        backlog.sent()

    def _failure(self, exc: redis.RedisError, count: int) -> EnqueueError:
        where = f"Redis at {redact(self.settings.broker_url)}"
        if isinstance(exc, redis.TimeoutError):
            timeout = self.settings.enqueue_timeout_seconds
            what = f"no answer within {timeout:g} s"
            outcome = "nothing was enqueued, unless a merely busy Redis still runs the command"
        else:
            what = "unreachable" if isinstance(exc, redis.ConnectionError) else "refused"
            outcome = "nothing was enqueued"
        return EnqueueError(
            f"could not enqueue {count} goal(s): {where} {what} "
            f"({type(exc).__name__}: {exc}); {outcome}"
        )


def new_event(fields: Mapping[str, Any]) -> GoalEvent:
    """A fresh event for validated fields: a new UUID and the enqueue time."""
    return GoalEvent(
        event_id=str(uuid.uuid4()),
        visitor_id=fields["visitor_id"],
        name=fields["name"],
        metadata=fields["metadata"],
        description=fields["description"],
        enqueued_at=round(time.time(), 3),
    )


def _goal_fields(goal: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(goal, Mapping):
        raise InvalidGoal({"goal": [f"must be a mapping, not {type(goal).__name__}"]})
    unknown = set(goal) - {"visitor_id", "name", "metadata", "description"}
    if unknown:
        raise InvalidGoal({field: ["unknown field"] for field in sorted(unknown)})
    return {
        "visitor_id": goal.get("visitor_id"),
        "name": goal.get("name"),
        "metadata": goal.get("metadata"),
        "description": goal.get("description"),
    }


def _open_backlog(settings: Settings, queue: GoalQueue) -> Backlog | None:
    if not settings.spool_dir:
        return None
    try:
        spool = Spool(settings.spool_dir, lock_timeout=settings.enqueue_timeout_seconds)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"GOALQUEUE_SPOOL_DIR={settings.spool_dir!r} cannot hold a spool: {exc}"
        ) from exc
    return Backlog(spool, queue)


_DEADLINE: ContextVar[float | None] = ContextVar("goalqueue_enqueue_deadline", default=None)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Every wait on a connection made by :func:`connect` ends within ``seconds`` from now."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None) -> float | None:
    """``timeout`` cut to what is left of the running deadline; raises once none is left."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise redis.TimeoutError("the enqueue timeout ran out")
    return left if timeout is None else min(timeout, left)


# Redis notices that a WAIT timed out on its next event-loop pass, up to 1/hz (100 ms) late.
WAIT_REPLY_MARGIN = 0.15


def _wait_ms() -> int:
    """WAIT's timeout: what is left of the deadline, less time for the reply (never 0, which
    would wait forever)."""
    left = _left(None)
    assert left is not None  # only called inside a deadline
    return max(1, int((left - max(left / 10, WAIT_REPLY_MARGIN)) * 1000))


class _DeadlineMixin:
    """A redis-py connection whose connect, send and read each wait at most until the deadline.

    A connection that runs out of time between sending and reading is dropped, so no late reply
    is left for the next command to read.
    """

    socket_timeout: float | None
    socket_connect_timeout: float | None
    _sock: Any

    def _connect(self) -> socket.socket:
        configured = self.socket_connect_timeout
        self.socket_connect_timeout = _left(configured)
        try:
            return super()._connect()  # type: ignore[misc, no-any-return]
        finally:
            self.socket_connect_timeout = configured

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._cut_socket_timeout()
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self._cut_socket_timeout()
        return super().read_response(*args, **kwargs)  # type: ignore[misc]

    def _cut_socket_timeout(self) -> None:
        if self._sock is None or _DEADLINE.get() is None:
            return
        try:
            self._sock.settimeout(_left(self.socket_timeout))
        except redis.TimeoutError:
            self.disconnect()  # type: ignore[attr-defined]
            raise


@cache
def _with_deadline(base: type) -> type:
    """``base`` (plain, TLS, unix socket, or Sentinel-managed) whose every wait ends by the
    deadline."""
    return type(f"Deadline{base.__name__}", (_DeadlineMixin, base), {})


@cache
def default_queue() -> GoalQueue:
    """The process-wide queue that :func:`track_goal` uses, configured from the environment."""
    return GoalQueue()


def track_goal(
    visitor_id: str,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
) -> str:
    """Validate and enqueue one goal on the queue configured by the environment."""
    return default_queue().track_goal(visitor_id, name, metadata=metadata, description=description)
