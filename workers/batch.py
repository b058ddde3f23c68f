"""Micro-batches: one Celery task delivers its own goal and up to ``batch_size - 1`` more.

Celery's per-message machinery (kombu's BRPOP and unacked bookkeeping, the request, its events
and log lines) costs a worker more CPU than the HTTP request it carries. So a task, once it runs,
claims more goal messages straight off the queue in the same Lua call that takes its own goal,
POSTs them all at once on a shared thread pool (each thread on its own keep-alive connection),
and records their outcomes in groups as the answers arrive (see :mod:`workers.delivery`). The
task returns, and Celery acks its message, only after every goal of the batch is settled.

The claimed messages never enter kombu's unacked bookkeeping: if the worker dies mid-batch, the
ledger still holds their goals and the reconciler puts them back, the same path as a message
lost right after kombu's BRPOP. Flower still sees every goal: the batch sends each claimed goal's
``task-received`` and ``task-succeeded`` events, as one message.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from goalqueue import keys
from workers.delivery import Deliverer, Delivery

logger = logging.getLogger(__name__)


class Batcher:
    """Runs each task's batch on one deliverer and one thread pool for the whole process."""

    def __init__(
        self,
        deliverer: Deliverer,
        batch_size: int,
        concurrency: int,
        dispatcher: Callable[[str | None], Any] | None = None,
    ) -> None:
        self.deliverer = deliverer
        self.batch_size = batch_size
        self._pool = (
            ThreadPoolExecutor(batch_size * concurrency, thread_name_prefix="goalqueue-deliver")
            if batch_size > 1
            else None
        )
        self._lock = threading.Lock()
        self._make_dispatcher = dispatcher
        self._dispatcher: Any = None

    def deliver(self, event_id: str, seq: int, hostname: str | None = None) -> str:
        """Deliver ``(event_id, seq)`` and a batch of claimed goals; returns a summary."""
        own, *claimed = self.deliverer.deliver_batch(
            [(event_id, seq)], claim=self.batch_size - 1, executor=self._pool
        )
        if not claimed:
            return own.result
        self._announce(claimed, hostname)
        tally = Counter(delivery.result for delivery in claimed)
        extra = ", ".join(f"{count} {result}" for result, count in sorted(tally.items()))
        return f"{own.result} (+{len(claimed)}: {extra})"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._dispatcher is not None:
            self._dispatcher.close()
        self.deliverer.sender.close()

    def _announce(self, claimed: list[Delivery], hostname: str | None) -> None:
        """Task events for the claimed goals, sent as one message, so Flower shows every goal."""
        if self._make_dispatcher is None:
            return
        with self._lock:
            try:
                if self._dispatcher is None:
                    self._dispatcher = self._make_dispatcher(hostname)
                send = self._dispatcher.send
                for delivery in claimed:
                    send(
                        "task-received",
                        uuid=delivery.event_id,
                        name=keys.TASK_NAME,
                        args="()",
                        kwargs="{}",
                        retries=0,
                    )
                    send(
                        "task-succeeded",
                        uuid=delivery.event_id,
                        result=repr(delivery.result),
                        runtime=delivery.seconds,
                    )
                self._dispatcher.flush()
            except Exception as exc:  # events are for monitoring: never fail a delivered batch
                logger.warning("could not send task events for a batch: %s", exc)
                self._dispatcher = None
