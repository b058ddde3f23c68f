"""The web app's side: validate a goal, stamp it, enqueue it in one Redis round trip.

Every entry point enqueues through :meth:`GoalQueue.enqueue`: ``track_goal``, ``track_goals``,
the Flask and Django helpers, ``goalqueue send``, and (with the same rules, on its event loop) the
asyncio producer in :mod:`goalqueue.asyncio`. Its contract:

* a call waits at most ``GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS`` for Redis, whether Redis refuses,
  is unreachable or hangs (see :mod:`goalqueue.deadline`), plus at most
  :data:`~goalqueue.spool.store.SPOOL_WAIT_SECONDS` for the spool;
* with ``GOALQUEUE_SPOOL_DIR`` set, a goal Redis did not confirm in time is kept in the local
  spool (see :mod:`goalqueue.spool`) and re-sent in the background with the same event id; the
  call returns as if it had been enqueued, and raises only if the spool cannot keep it either.
  Once Redis has failed a call, the process's next calls go straight to the spool until the
  spool's flusher gets through again: one wait per outage and per call already waiting;
* without a spool, :class:`~goalqueue.errors.EnqueueError` says which goals Redis confirmed and
  whether the others are surely not enqueued (:class:`~goalqueue.errors.NotEnqueued`) or may be
  (:class:`~goalqueue.errors.MaybeEnqueued`);
* an event id goalqueue knows (queued, waiting, delivered, dead) is never enqueued twice, so
  enqueueing again with the same ids is always safe.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis
from redis.exceptions import NoScriptError

from goalqueue.config import Settings, get_settings
from goalqueue.connections import call
from goalqueue.deadline import connect, deadline
from goalqueue.errors import ConfigError, EnqueueError
from goalqueue.event import GoalEvent
from goalqueue.goals import goal_event, goal_events, minted
from goalqueue.rounds import Pair, Round, pairs
from goalqueue.scripts import EnqueueScript
from goalqueue.spool import Backlog, Spool


class GoalQueue:
    """Enqueues goal events for delivery to DataFast.

    ``GoalQueue()`` reads its settings from the environment; ``GoalQueue(broker_url=...)`` sets
    the broker explicitly, ``GoalQueue(settings=...)`` everything.
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
        self.script = EnqueueScript(settings.keys)
        self.backlog = open_backlog(settings, self)

    def track_goal(
        self,
        visitor_id: str,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Validate and enqueue one goal; returns its event id (``event_id``, a UUID, if given).

        Raises :class:`~goalqueue.InvalidGoal` for a bad goal (nothing enqueued), and
        :class:`~goalqueue.EnqueueError` when Redis did not confirm it and no spool kept it.
        """
        event = goal_event(visitor_id, name, metadata, description, event_id)
        self.enqueue([event], new_ids=event_id is None)
        return event.event_id

    def track_goals(self, goals: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every goal, then enqueue them all in one round trip; returns their event ids.

        Each goal is a mapping with ``visitor_id`` and ``name`` and optionally ``metadata``,
        ``description`` and ``event_id``. If any goal is invalid, none is enqueued, and
        :class:`~goalqueue.InvalidGoal` names each bad field as ``[index].field``.
        """
        goals = list(goals)
        events = goal_events(goals)
        self.enqueue(events, new_ids=minted(goals))
        return [event.event_id for event in events]

    def enqueue(self, events: Sequence[GoalEvent], *, new_ids: bool = False) -> None:
        """Enqueue events that carry their ids: to Redis or, failing that, to the spool.
        ``new_ids``: every id was made for its event by this call (see :func:`minted`), so
        none is looked up."""
        backlog = self.backlog
        if backlog is None:
            self.enqueue_payloads(pairs(events), new_ids=new_ids)
        elif backlog.redis_down:
            backlog.keep(events)
        else:
            try:
                self.enqueue_payloads(pairs(events), new_ids=new_ids)
            except EnqueueError as exc:
                backlog.keep_unconfirmed(events, exc)
            else:
                backlog.sent()

    def enqueue_payloads(self, pairs: Sequence[Pair], *, new_ids: bool = False) -> None:
        """Enqueue stored ``(event id, event JSON)`` pairs byte for byte, to Redis only; an id
        goalqueue knows adds nothing, unless ``new_ids`` says none can be known (ids just made).

        Never spools: this is how the spool's flusher re-sends what it holds. Raises
        :class:`~goalqueue.EnqueueError` when Redis does not confirm them all in time.
        """
        if not pairs:
            return
        if len(pairs) == 1 and not self.settings.replicas_to_wait_for:
            self._enqueue_one(*pairs[0], new_ids)
            return
        this = Round(pairs, self.settings, new_ids)
        with deadline(self.settings.enqueue_timeout_seconds) as current:
            try:
                shortfall = this.shortfall(self._send(this, current.wait_ms))
            except redis.RedisError as exc:
                raise this.error(this.failure(exc, current.sent)) from exc
        if shortfall is not None:
            raise this.error(shortfall)

    def _enqueue_one(self, event_id: str, payload: str, new_id: bool) -> None:
        """One goal and no WAIT (a web request's ``track_goal``): one bare EVALSHA, and a
        :class:`Round` only to explain a failure. After NOSCRIPT (the call did not run) the
        scripts are loaded and it goes again."""
        sha = (self.script.new if new_id else self.script.checked).sha
        with deadline(self.settings.enqueue_timeout_seconds) as current:
            try:
                try:
                    call(self.redis, "EVALSHA", sha, 0, event_id, payload)
                except NoScriptError:
                    self._load_scripts()
                    call(self.redis, "EVALSHA", sha, 0, event_id, payload)
            except redis.RedisError as exc:
                this = Round([(event_id, payload)], self.settings, new_id)
                raise this.error(this.failure(exc, current.sent)) from exc

    def _send(self, this: Round, wait_ms: Callable[[], int]) -> list[object]:
        """Each chunk's reply (or error), then WAIT's, in one round trip; after NOSCRIPT (no
        call ran) the script is loaded and the round sent again."""
        replies = self._send_once(this, wait_ms)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            this = this.again()
            self._load_scripts()
            replies = self._send_once(this, wait_ms)
        return replies

    def _load_scripts(self) -> None:
        for script in self.script.both:
            self.redis.script_load(script.source)

    def _send_once(self, this: Round, wait_ms: Callable[[], int]) -> list[object]:
        commands = this.commands(self.script)
        if this.single:
            try:
                sha, args = commands[0]
                return [call(self.redis, "EVALSHA", sha, 0, *args)]
            except NoScriptError as exc:
                return [exc]
        with self.redis.pipeline(transaction=False) as pipe:
            for sha, args in commands:
                pipe.evalsha(sha, 0, *args)
            if this.replicas:
                pipe.wait(this.replicas, wait_ms())
            replies: list[object] = pipe.execute(raise_on_error=False)
        return replies

    def close(self) -> None:
        """Stop the spool flusher, if one runs, and close the Redis client it made."""
        if self.backlog is not None:
            self.backlog.close()
        if self._owns_redis:
            self.redis.close()


def open_backlog(settings: Settings, queue: Any) -> Backlog | None:
    """The spool of ``GOALQUEUE_SPOOL_DIR`` for a producer whose flusher re-sends to
    ``queue``; None without one. A directory that cannot hold a spool is a ConfigError."""
    if not settings.spool_dir:
        return None
    try:
        spool = Spool(settings.spool_dir)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"GOALQUEUE_SPOOL_DIR={settings.spool_dir!r} cannot hold a spool: {exc}"
        ) from exc
    return Backlog(spool, queue)


_default: GoalQueue | None = None
_pinned: GoalQueue | None = None
_default_lock = threading.Lock()


def default_queue() -> GoalQueue:
    """The process-wide queue that :func:`track_goal` and the web integrations use: the one
    pinned by the testing kit, else the one :func:`set_default_queue` installed, else one
    configured by the environment (made on first use)."""
    global _default
    with _default_lock:
        if _pinned is not None:
            return _pinned
        if _default is None:
            _default = GoalQueue()
        return _default


def set_default_queue(queue: GoalQueue | None) -> GoalQueue | None:
    """Install ``queue`` as the process-wide queue (None: the environment's, made on first use);
    returns the one it replaces. The web integrations call it at start."""
    global _default
    with _default_lock:
        previous, _default = _default, queue
        return previous


def pin_default_queue(queue: GoalQueue | None) -> None:
    """Make ``queue`` the process-wide queue whatever :func:`set_default_queue` installs, until
    unpinned with None: :mod:`goalqueue.testing` pins its recorder, so that an app made during a
    test (a Flask app factory calling ``init_app``) still records."""
    global _pinned
    with _default_lock:
        _pinned = queue


def track_goal(
    visitor_id: str,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    event_id: str | None = None,
) -> str:
    """Validate and enqueue one goal on the process-wide queue; returns its event id."""
    return default_queue().track_goal(
        visitor_id, name, metadata=metadata, description=description, event_id=event_id
    )


def track_goals(goals: Iterable[Mapping[str, Any]]) -> list[str]:
    """Validate and enqueue many goals on the process-wide queue, in one round trip."""
    return default_queue().track_goals(goals)
