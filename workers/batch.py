"""Micro-batches: one Celery task delivers its own goal and up to ``batch_size - 1`` more.

Celery's per-message machinery (kombu's BRPOP and unacked bookkeeping, the request, its events
and log lines) costs a worker more CPU than the HTTP request it carries. So a task, once it runs,
claims more goal messages straight off the queue with one Lua call and delivers them all at once,
each on the unchanged one-goal path (:meth:`Deliverer.deliver`), in a thread of its own with its
own keep-alive HTTP connection. The task returns, and Celery acks its message, only after every
goal of the batch has its outcome recorded.

The claimed messages never enter kombu's unacked bookkeeping: if the worker dies mid-batch, the
ledger still holds their goals and the reconciler puts them back, the same path as a message
lost right after kombu's BRPOP. Flower still sees every goal: the batch sends each claimed goal's
``task-received`` and ``task-succeeded`` events, as one message.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from goalqueue import keys
from workers.delivery import Deliverer

logger = logging.getLogger(__name__)


class Batcher:
    """Delivers micro-batches with per-thread deliverers sharing one Redis client."""

    def __init__(
        self,
        make_deliverer: Callable[[], Deliverer],
        batch_size: int,
        concurrency: int,
        dispatcher: Callable[[str | None], Any] | None = None,
    ) -> None:
        self.batch_size = batch_size
        self._make_deliverer = make_deliverer
        self._local = threading.local()
        self._deliverers: list[Deliverer] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max((batch_size - 1) * concurrency, 1), thread_name_prefix="goalqueue-deliver"
        )
        self._make_dispatcher = dispatcher
        self._dispatcher: Any = None

    def deliver(self, event_id: str, seq: int, hostname: str | None = None) -> str:
        """Deliver ``(event_id, seq)`` and a batch of claimed goals; returns a summary."""
        own = self.deliverer()
        claimed = self._claim(own) if self.batch_size > 1 else []
        futures = [self._pool.submit(self._deliver_one, *pair) for pair in claimed]
        outcome = own.deliver(event_id, seq)
        wait(futures)  # every claimed goal settles before the task returns and is acked
        results = [
            (pair[0], future.result()) for pair, future in zip(claimed, futures, strict=True)
        ]
        if results:
            self._announce(results, hostname)
            tally = Counter(result for _, (result, _) in results)
            extra = ", ".join(f"{count} {result}" for result, count in sorted(tally.items()))
            return f"{outcome} (+{len(results)}: {extra})"
        return outcome

    def deliverer(self) -> Deliverer:
        """This thread's deliverer, made on first use."""
        deliverer: Deliverer | None = getattr(self._local, "deliverer", None)
        if deliverer is None:
            deliverer = self._local.deliverer = self._make_deliverer()
            with self._lock:
                self._deliverers.append(deliverer)
        return deliverer

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._dispatcher is not None:
            self._dispatcher.close()
        with self._lock:
            for deliverer in self._deliverers:
                deliverer.http.close()
            self._deliverers.clear()

    def _deliver_one(self, event_id: str, seq: int) -> tuple[str, float]:
        started = time.monotonic()
        return self.deliverer().deliver(event_id, seq), time.monotonic() - started

    def _claim(self, deliverer: Deliverer) -> list[tuple[str, int]]:
        flat = deliverer.scripts.claim([self.batch_size - 1, keys.TASK_NAME])
        return [(str(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    def _announce(self, results: list[tuple[str, tuple[str, float]]], hostname: str | None) -> None:
        """Task events for the claimed goals, sent as one message, so Flower shows every goal."""
        if self._make_dispatcher is None:
            return
        with self._lock:
            try:
                if self._dispatcher is None:
                    self._dispatcher = self._make_dispatcher(hostname)
                for event_id, (result, runtime) in results:
                    send = functools.partial(self._dispatcher.send, uuid=event_id)
                    send("task-received", name=keys.TASK_NAME, args="()", kwargs="{}", retries=0)
                    send("task-started")
                    send("task-succeeded", result=repr(result), runtime=runtime)
                self._dispatcher.flush()
            except Exception as exc:  # events are for monitoring: never fail a delivered batch
                logger.warning("could not send task events for a batch: %s", exc)
                self._dispatcher = None
