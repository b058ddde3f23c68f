"""Task events for the goals a task claims, so that Flower shows every goal as a task.

Celery sends the events of the task's own goal. A claimed goal has no message of its own, so
once it is recorded the event loop hands it to this thread, which sends one ``task-succeeded``
event for it on the producer of Celery's event dispatcher, everything waiting as one message.
The event also carries what ``task-received`` would have said (name, arguments, when it was
received): Flower's state merges every field of a task's first event, so the goal shows up
named and placed like any other task, for half the cost of two events. Publishing is blocking
I/O: it stays off the event loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.utils.time import utcoffset

from goalqueue.keys import TASK_NAME
from workers.delivery import Delivery

logger = logging.getLogger(__name__)

# How long the thread lets a group gather after its first delivery. Each wake-up of this thread
# takes the GIL from the event loop, and each message costs kombu's producer: waking for nearly
# every goal, then 10 times a second, then twice a second each gave a worker process more goals/s
# and less CPU per goal (0.1 s: +5-8% and -4-6%; 0.5 s: 398 -> 380 us per goal at 50 ms, median
# of 3 interleaved rounds). Flower shows a goal at most this much later.
LINGER_SECONDS = 0.5


class Announcer:
    """A thread that sends the task events of settled claimed goals, in groups."""

    def __init__(self, make_dispatcher: Callable[[], Any]) -> None:
        self._make_dispatcher = make_dispatcher
        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread that sends what is announced."""
        self._thread = threading.Thread(target=self._run, name="goalqueue-events", daemon=True)
        self._thread.start()

    def announce(self, delivery: Delivery) -> None:
        """Queue ``delivery``'s events; never blocks."""
        self._queue.put(delivery)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        dispatcher = None
        while (group := self._next_group()) is not None:
            try:
                dispatcher = dispatcher or self._make_dispatcher()
                _send(dispatcher, group)
            except Exception as exc:  # events are for monitoring: never stop over them
                logger.warning("could not send task events for %d goal(s): %s", len(group), exc)
                dispatcher = None
        if dispatcher is not None:
            dispatcher.close()

    def _next_group(self) -> list[Delivery] | None:
        """Every delivery queued by ``LINGER_SECONDS`` after the first; None once closed and
        empty."""
        first = self._queue.get()
        if first is None:
            return None
        time.sleep(LINGER_SECONDS)
        group = [first]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return group
            if item is None:
                self._queue.put(None)
                return group
            group.append(item)


def _send(dispatcher: Any, group: list[Delivery]) -> None:
    """The group's events as one ``task.multi`` message, as Celery's dispatcher sends a buffered
    group, with the fields of its ``Event`` built here once rather than event by event."""
    now, offset = time.time(), utcoffset()
    common = {
        "hostname": dispatcher.hostname,
        "utcoffset": offset,
        "pid": dispatcher.pid,
        "clock": dispatcher.clock.forward(),  # one tick for the group, sent as one message
    }
    events = [
        {
            **common,
            "uuid": delivery.event_id,
            "name": TASK_NAME,
            "args": "()",
            "kwargs": "{}",
            "retries": 0,
            "received": now - delivery.seconds,
            "result": repr(delivery.summary),
            "runtime": delivery.seconds,
            "timestamp": now,
            "type": "task-succeeded",
        }
        for delivery in group
    ]
    dispatcher.producer.publish(
        events,
        routing_key="task.multi",
        exchange=dispatcher.exchange.name,
        declare=[dispatcher.exchange],
        serializer=dispatcher.serializer,
        headers=dispatcher.headers,
        delivery_mode=dispatcher.delivery_mode,
    )
