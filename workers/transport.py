"""kombu's Redis transport, hardened: no message in the queue and no Redis restart stops a worker.

Poison messages. A goal's message is written by :mod:`goalqueue.message`, so anything else in
the queue came from a bug, a stray client or someone with write access to Redis. It must end as a
``poison`` dead letter (raw text kept, cut to :data:`goalqueue.deadletters.RAW_LIMIT`), never stop
a worker and never come back. Each layer where Celery can choke on it has its guard:

    layer                         left alone, a poison message ...        guard
    kombu envelope (BRPOP read)   raises out of the event loop: the       :class:`Channel` here
      not JSON, not an object,    worker dies ("Unrecoverable error"),
      no properties.delivery_tag  the message already popped and gone
    Celery task handler           KeyError counts as a lost connection:   Consumer, in
      headers without an id, ...  the message is restored, read again,    :mod:`workers.consumer`
                                  forever, and no goal behind it moves
    headers / task name           rejected with a log line only           Consumer hooks
    task body (not JSON)          ``on_decode_error``                     Consumer hook
    task arguments                the task itself                         ``workers.tasks``

kombu's Sentinel channel gets the same guards (:class:`SentinelChannel`).

kombu pops a message with BRPOP and decodes it inside ``Channel._brpop_read`` before anything
else sees it. Rather than copy that method, the channel reads BRPOP replies through a Redis
client that screens each popped message: one kombu cannot turn into a message is buried here
and the reply reported as empty, which the event loop treats as "nothing to read".

Redis going away. When Redis drops the connection, Celery's consumer closes the channel and kombu
detaches it from its transport, but work for it is still under way: a task that finishes acks
its message through the old channel, and a close that failed half way (the pending BRPOP reply
raised) is retried and restores unacked messages. Either one has kombu rebuild a Redis pool from
the detached transport: ``AttributeError: 'NoneType' object has no attribute 'client'`` (or
``'hostname'``) escapes into the event loop and the worker dies (kombu 5.7.0, on most Redis
restarts under load). Here a detached channel raises ``redis.ConnectionError`` instead, which
Celery handles: the ack is logged as failed and the message stays in kombu's unacked hash in
Redis, where a worker restores it after the visibility timeout (its goal, already settled, is
then dropped as a stale copy).

Redis at maxmemory. With ``noeviction`` Redis then refuses every MULTI and any command that may
grow memory, and kombu's bookkeeping of unacknowledged messages uses both: its ack is a MULTI
(the worker dies with ``Unrecoverable error: OutOfMemoryError``), so is recording a message it
took, and its restore sweep takes a lock with SET (a worker started at OOM dies). Yet draining
the queue is what frees memory. So the channel's clients open no MULTI unless asked for one
(:class:`ScreeningRedis`: an ack is a plain ZREM and HDEL), and :class:`QoS` keeps kombu's keys
and their meaning but records and restores with the scripts ``unacked.lua`` and ``restore.lua``
(flagged ``allow-oom``: a message moves between the queue and the unacked hash), sweeping for
messages to restore without the lock (each restore is atomic: two workers restoring the same
message push it once). A binding Redis refuses to store is not needed to consume.

Redis stalling. A frozen or restarting Redis restores nothing, and once it answers again the
goals workers hold get the whole visibility timeout anew (``lua/reconcile.lua`` moves kombu's
unacked index forward by the stall): :class:`QoS` restores only once the reconciler has run
since, so that a goal whose outcome is still being recorded is not sent again.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils import encoding as kombu_encoding
from kombu.utils import json as kombu_json

from goalqueue.deadletters import RAW_LIMIT, DeadLetter
from goalqueue.keys import Keys
from workers.scripts import Settlement, SweeperScripts, UnackedScripts

logger = logging.getLogger(__name__)

# The transport option that names the namespace whose dead letters poison goes to (see
# workers.app).
NAMESPACE = "goalqueue_namespace"
# The transport option that says how long a gap between reconciler runs is a stall (see
# workers.sweeper.stall_seconds).
STALL = "goalqueue_stall_seconds"
# Types redis-py can store as kombu's unacked-hash field: anything else fails in kombu's QoS.
_TAG_TYPES = (str, int, float)

# kombu's decoding, as its Redis channel applies it to a popped item (typed here: kombu's is not).
# The kombu and redis-py methods this module calls through super() are not annotated either:
# those calls carry ``type: ignore[no-untyped-call]``.
_text: Callable[[bytes | str], str] = kombu_encoding.bytes_to_str
_loads: Callable[[str], Any] = kombu_json.loads
_dumps: Callable[[Any], str] = kombu_json.dumps


def bury(client: redis.Redis, keys: Keys, raw: str | bytes, error: str) -> str | None:
    """Keep ``raw`` as a ``poison`` dead letter of ``keys``' namespace, counted with the other
    dead letters (one SETTLE, which Redis runs even when full); returns its id, or None if
    Redis refused it.

    Never raises: a poison message that cannot even be stored is logged (cut short) and
    dropped, so that it cannot stop the worker.
    """
    letter = DeadLetter.poison(raw, error)
    settlement = Settlement()
    settlement.bury("", letter)
    try:
        SweeperScripts(client, keys).settle(settlement, marker_ttl_ms=0)
    except redis.RedisError as exc:
        logger.error(
            "dropped a poison message (%s) that could not be dead-lettered (%s): %r",
            error,
            exc,
            letter.raw[:200] if letter.raw else "",
        )
        return None
    logger.error("dead-lettered a poison message as %s: %s", letter.event_id, error)
    return letter.event_id


def unreadable(channel: kombu_redis.Channel, item: bytes | str) -> str | None:
    """Why kombu could not make a message of the popped ``item``, or None when it can."""
    try:
        message = channel.Message(_loads(_text(item)), channel=channel)  # type: ignore[no-untyped-call]
    except Exception as exc:  # anything: this is exactly the error kombu would raise
        return f"unreadable message envelope: {type(exc).__name__}: {str(exc)[:RAW_LIMIT]}"
    # What kombu's QoS.append needs to record the message as unacknowledged.
    tag, info = message.delivery_tag, message.delivery_info
    if isinstance(tag, bool) or not isinstance(tag, _TAG_TYPES):
        return f"unreadable message envelope: delivery_tag is a {type(tag).__name__}"
    if not (
        isinstance(info, dict)
        and isinstance(info.get("exchange"), str)
        and isinstance(info.get("routing_key"), str)
    ):
        return "unreadable message envelope: no delivery_info with exchange and routing_key"
    return None


class ScreeningRedis(redis.Redis):
    """A Redis client whose BRPOP replies only ever hold messages kombu can read, and whose
    pipelines are not transactions unless asked for.

    ``screen(item)`` returns True to let a popped item through; when it returns False the
    reply is reported as empty (kombu then raises ``Empty``, which its event loop ignores).

    kombu opens its pipelines with ``pipeline()``: a MULTI, which Redis refuses at maxmemory
    whatever it holds (an ack's ZREM and HDEL, the LLEN of a queue declared at start, the SADD of
    a binding that is already there). None of them needs one to be correct; kombu's one
    read-then-write (a restore) asks for its transaction, and :class:`QoS` replaces it.
    """

    screen: Any = None

    def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> Any:
        return super().pipeline(transaction, shard_hint)

    def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
        reply = super().parse_response(connection, command_name, **options)  # type: ignore[no-untyped-call]
        if command_name == "BRPOP" and reply and self.screen is not None:
            _, item = reply
            if not self.screen(item):
                return None
        return reply


@functools.cache
def _screening(client_cls: type[redis.Redis]) -> type[redis.Redis]:
    if issubclass(ScreeningRedis, client_cls):
        return ScreeningRedis
    return type(f"Screening{client_cls.__name__}", (ScreeningRedis, client_cls), {})


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, doing only what Redis still runs at maxmemory."""

    @functools.cached_property
    def scripts(self) -> UnackedScripts:
        with self.channel.conn_or_acquire() as client:
            return UnackedScripts(client, self.unacked_key, self.unacked_index_key)

    def append(self, message: Any, delivery_tag: Any) -> None:
        """Record ``message`` as unacknowledged, as kombu does, in one script."""
        info = message.delivery_info
        envelope = _dumps([message._raw, info["exchange"], info["routing_key"]])
        self.scripts.record(delivery_tag, envelope, time.time())
        virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's sweep for messages unacknowledged past the visibility timeout, run every
        ``interval`` calls, without its lock."""
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            if not self._leases_kept(client):
                return
            visible = client.zrange(
                self.unacked_index_key, time.time() - self.visibility_timeout, 0,
                desc=True, byscore=True, offset=num and start, num=num,
            )  # fmt: skip
            for tag in visible:
                self.restore_by_tag(tag, client)

    def _leases_kept(self, client: Any) -> bool:
        """Whether the reconciler has run since Redis last stalled. Until it has, the times of
        the unacked messages still count the stall (see ``lua/reconcile.lua``), and restoring
        them would send again goals whose outcomes are being recorded."""
        options = self.channel.connection.client.transport_options
        if options.get(STALL) is None:
            return True
        with client.pipeline() as pipe:
            pipe.time()
            pipe.get(Keys(options[NAMESPACE]).reconciled)
            (seconds, micros), reconciled = pipe.execute()
        if reconciled is None:
            return False
        since: float = seconds + micros / 1e6 - float(reconciled)
        return since <= float(options[STALL])

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        """Put the message ``tag`` back on its queue, as kombu does, in one script."""
        with self.channel.conn_or_acquire(client) as client:
            read = client.hget(self.unacked_key, tag)
            if read is None:
                self._remove_from_indices(tag).execute()  # type: ignore[no-untyped-call]
                return
            message, exchange, routing_key = _loads(_text(read))
            pushes = _Pushes()
            self.channel._do_restore_message(message, exchange, routing_key, pushes, leftmost)
            self.scripts.restore(tag, read, pushes.items, leftmost)


class _Pushes:
    """Stands in for the pipeline kombu's ``_do_restore_message`` pushes a message on."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def lpush(self, queue: str, message: str) -> None:
        self.items.append((queue, message))

    rpush = lpush


class Channel(kombu_redis.Channel):
    """kombu's Redis channel: buries unreadable messages, fails cleanly once detached, and
    keeps consuming when Redis is full."""

    QoS = QoS

    def _get_client(self) -> Any:
        client = super()._get_client()  # type: ignore[no-untyped-call]
        if isinstance(client, functools.partial):  # a global key prefix: PrefixedStrictRedis
            return functools.partial(_screening(client.func), *client.args, **client.keywords)
        return _screening(client)

    def _create_client(self, asynchronous: bool = False) -> Any:
        client = super()._create_client(asynchronous)  # type: ignore[no-untyped-call]
        client.screen = self._deliverable
        return client

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """kombu's binding of ``queue``, which a full Redis may refuse to store: the worker
        consumes without it (the producer writes goals straight to the queue)."""
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[no-untyped-call]
        except redis.OutOfMemoryError as exc:
            logger.warning("Redis is full: kombu's binding of %s not stored (%s)", queue, exc)

    def maybe_refresh_binding_expiry(self) -> None:
        """kombu's refresh of the control queue's expiring binding, put off while Redis is full
        (kombu would log a traceback a second; consuming needs no binding)."""
        try:
            super().maybe_refresh_binding_expiry()  # type: ignore[no-untyped-call]
        except redis.OutOfMemoryError:
            logger.debug("Redis is full: kombu's bindings not refreshed", exc_info=True)

    def _deliverable(self, item: bytes | str) -> bool:
        problem = unreadable(self, item)
        if problem is None:
            return True
        namespace = self.connection.client.transport_options[NAMESPACE]
        bury(self.client, Keys(namespace), item, problem)
        return False

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """kombu's bookkeeping client, made once per channel instead of once per call.

        kombu 5.7 builds a new ``redis.Redis`` for every unacked-bookkeeping call, a tenth of a
        worker's CPU per goal; one client per channel is thread-safe (its commands take
        connections from the channel's pool).
        """
        if client is None:
            client = self.__dict__.get("_bookkeeping_client")
            if client is None:
                client = self.__dict__["_bookkeeping_client"] = self._create_client()
        yield client

    def _connparams(self, asynchronous: bool = False) -> Any:
        """kombu's connection parameters; a connection error once the channel is detached."""
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("this broker channel was closed with its connection")
        return super()._connparams(asynchronous)  # type: ignore[no-untyped-call]


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Redis Sentinel channel with the guards of :class:`Channel` (which come first
    in its MRO, then kombu's Sentinel methods). Its connections ask the sentinels for the
    master whenever they connect, so after a failover the consumer's reconnect finds the new
    one."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the hardened :class:`Channel`."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with the hardened :class:`SentinelChannel`."""

    Channel = SentinelChannel


_HARDENED: dict[type, type] = {
    kombu_redis.Transport: Transport,
    kombu_redis.SentinelTransport: SentinelTransport,
}


def hardened(transport_cls: type) -> type:
    """The hardened counterpart of a kombu transport class (other transports: unchanged)."""
    return _HARDENED.get(transport_cls, transport_cls)


def harden(connection: Any) -> Any:
    """``connection``, switched to the hardened counterpart of its transport.

    A dotted name, not the class: ``celery inspect stats`` reports it and must be JSON.
    """
    transport = hardened(connection.get_transport_cls())
    connection.transport_cls = f"{transport.__module__}:{transport.__qualname__}"
    return connection
