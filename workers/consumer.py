"""Celery's consumer, hardened so that no message in the queue can stop or stall a worker.

Every message that is not a readable ``goalqueue.deliver`` task becomes a ``poison`` dead letter
and is taken off the queue for good (see :mod:`workers.transport` for the layers and why):

* the connection it reads from uses the hardened transport of :mod:`workers.transport`, so an
  unreadable envelope never reaches the event loop (and the one its task events go out on
  does too, for the transport's single Redis client);
* any error while handling one message is that message's problem: it is buried and rejected
  instead of being taken for a lost connection (kombu counts ``KeyError`` as one, and the
  restore that follows would bring the message back forever);
* undecodable bodies, unknown task names and messages that are not task messages are buried
  as well as rejected with Celery's own log line.

It also tells the process's consumer watchdog (:mod:`workers.watchdog`) when it last received a
task message and whether it has room for another, and it caps the pause between its attempts
to reconnect to Redis at ``GOALQUEUE_RECONNECT_MAX_SECONDS``: Celery retries with kombu's
``ensure_connection``, whose back-off grows by 2 s an attempt up to a cap Celery leaves at
kombu's 30 s.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from celery.utils.functional import promise
from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.utils import json as kombu_json

from workers.transport import bury, harden

logger = logging.getLogger(__name__)

# kombu's JSON encoder (typed here: kombu's is not).
_dumps: Callable[[Any], str] = kombu_json.dumps


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """The consumer ``worker_consumer`` names in workers/app.py."""

    received = 0.0  # time.monotonic() when the last task message reached it

    def has_room(self) -> bool:
        """Whether it may take another task message: it holds fewer than its prefetch limit
        (as Celery counts them: received and not finished)."""
        qos = getattr(self, "qos", None)
        limit = qos.value if qos is not None else self.initial_prefetch_count
        return not limit or len(state.reserved_requests) < limit

    def ensure_connected(self, conn: Any) -> Any:
        """Celery's, with the reconnect back-off capped at ``GOALQUEUE_RECONNECT_MAX_SECONDS``."""
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_max=self.app.settings.reconnect_max_seconds
        )
        return super().ensure_connected(conn)

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        """The broker connection tasks are read from, with the hardened transport."""
        return self.ensure_connected(harden(self.app.connection_for_read(heartbeat=heartbeat)))

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection task events go out on: the hardened transport publishes them on one
        Redis client per channel, where kombu's builds a new one for every event."""
        return self.ensure_connected(
            harden(self.app.connection_for_write(url=url, heartbeat=heartbeat))
        )

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], Any]:
        """Celery's handler for one message, with any error in it blamed on the message."""
        handle = super().create_task_handler(promise)
        broker_trouble = tuple(e for e in self.connection_errors if e is not KeyError)

        def on_task_received(message: Any) -> Any:
            self.received = time.monotonic()
            try:
                return handle(message)
            except broker_trouble:
                raise
            except Exception as exc:
                self._dead_letter_and_reject(
                    message, f"unhandled message: {type(exc).__name__}: {exc}"
                )
                return None

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Keep a message whose body cannot be decoded; ack it so it cannot loop."""
        self._dead_letter_and_reject(message, f"undecodable message: {type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "not a task message: no task name in its headers")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = message.headers.get("task") if isinstance(message.headers, dict) else None
        self._dead_letter_and_reject(message, f"unknown task {name!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, f"invalid task message: {type(exc).__name__}: {exc}")
        super().on_invalid_task(body, message, exc)

    def _dead_letter(self, message: Any, error: str) -> None:
        """``message`` as a poison dead letter."""
        bury(self.app.process.redis, self.app.settings.keys, _raw(message), error)

    def _dead_letter_and_reject(self, message: Any, error: str) -> None:
        """``message`` as a poison dead letter, and off the queue."""
        self._dead_letter(message, error)
        if not message.acknowledged:
            message.reject_log_error(logger, self.connection_errors)


def _raw(message: Any) -> str | bytes:
    """The message as it was in the queue: kombu's envelope, or at least its body."""
    envelope = getattr(message, "_raw", None)
    if envelope is not None:
        try:
            return _dumps(envelope)
        except (TypeError, ValueError):
            pass
    return message.body or b""
