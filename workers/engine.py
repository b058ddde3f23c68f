"""A worker process's delivery engine: one asyncio event loop, on a thread of its own.

The loop owns the process's ``httpx.AsyncClient`` (on aiohttp), its ``redis.asyncio`` client
and every goal in flight. Celery's task thread hands it its goals and waits for the outcome;
each TAKE also claims as many queued goals as the process has room for, and so does the loop by
itself as room frees up (see :mod:`workers.delivery`): those run on the loop alone. One thread
does all the HTTP and all the recording.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from goalqueue import connections
from goalqueue.config import Settings
from workers.client import build_client
from workers.delivery import Deliverer, Delivery
from workers.outage import Outage

T = TypeVar("T")


class Engine:
    """The loop and its clients: made by :meth:`start`, closed by :meth:`close`; :meth:`run`
    may be called from any thread in between.

    ``transport`` replaces the aiohttp transport (tests pass an ``httpx.MockTransport``);
    ``announce`` is given each claimed goal once it is recorded (the task events); ``clock`` and
    ``rand`` are the time and the retries' jitter (tests pin them).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        announce: Callable[[Delivery], None] | None = None,
        outage: Outage | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._announce = announce
        self._outage = outage
        self._clock = clock
        self._rand = rand
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._deliverer: Deliverer | None = None

    @property
    def deliverer(self) -> Deliverer:
        """What delivers on the loop (once started)."""
        assert self._deliverer is not None, "the engine has not started"
        return self._deliverer

    def start(self) -> Engine:
        """Start the loop's thread, and make the clients on it."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="goalqueue-loop", daemon=True
        )
        self._thread.start()
        self._deliverer = self._run(self._open())
        return self

    async def _open(self) -> Deliverer:
        return Deliverer(
            self.settings,
            connections.async_client(self.settings),
            build_client(self.settings, transport=self._transport),
            clock=self._clock,
            rand=self._rand,
            announce=self._announce,
            outage=self._outage,
        )

    def run(self, event_id: str, seq: int) -> Delivery:
        """Deliver a task's goal ``seq`` (and whatever its TAKE claims); returns once its own
        outcome is recorded."""
        return self.submit(event_id, seq).result()

    def submit(self, event_id: str, seq: int) -> concurrent.futures.Future[Delivery]:
        """:meth:`run`, without waiting for the outcome."""
        assert self._loop is not None, "the engine has not started"
        return asyncio.run_coroutine_threadsafe(self.deliverer.task(event_id, seq), self._loop)

    def wait(self) -> None:
        """Wait until every goal claimed so far is settled."""
        self._run(self.deliverer.settled())

    def stop_waiting(self) -> None:
        """A shutdown has begun: claim nothing more, hold goals rather than wait for the pace,
        and give up soon on outcomes Redis does not take (they stay in the ledger). Safe from a
        signal handler's thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopping)

    def _stopping(self) -> None:
        self.deliverer.stopping = True
        self.deliverer.writer.stop()

    def close(self) -> None:
        """Finish every goal in flight and record it, then close the clients and the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        self._run(self._close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    async def _close(self) -> None:
        self._stopping()
        await self.deliverer.settled()
        await self.deliverer.poster.client.aclose()
        await self.deliverer.redis.aclose()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "the engine has not started"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
