"""A worker process's delivery engine: one asyncio event loop, on a thread of its own.

The loop owns the process's ``httpx.AsyncClient`` (on aiohttp), its ``redis.asyncio`` client
and every goal in flight. Celery's task threads hand it their goals and wait for the outcome;
each TAKE also claims as many queued goals as the process has room for, and those run on the
loop alone. One thread does all the HTTP and all the recording, so no recording waits for the
GIL behind dozens of delivery threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from goalqueue import connections
from goalqueue.config import Settings
from workers.client import build_client
from workers.delivery import Deliverer, Delivery

T = TypeVar("T")


class Engine:
    """Starts the loop and its clients; ``deliver`` may be called from any thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        announce: Callable[[Delivery], None] | None = None,
        **deliverer_options: Any,
    ) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="goalqueue-loop", daemon=True
        )
        self._thread.start()
        self.deliverer = self._run(self._open(transport, announce, deliverer_options))

    async def _open(
        self,
        transport: httpx.AsyncBaseTransport | None,
        announce: Callable[[Delivery], None] | None,
        options: dict[str, Any],
    ) -> Deliverer:
        client = connections.async_client(self.settings)
        http = build_client(self.settings, transport=transport)
        return Deliverer(self.settings, client, http, announce=announce, **options)

    def deliver(self, event_id: str, seq: int) -> Delivery:
        """Deliver the goal ``seq`` (and whatever its TAKE claims); returns once its own
        outcome is recorded."""
        return self.submit(event_id, seq).result()

    def submit(self, event_id: str, seq: int) -> concurrent.futures.Future[Delivery]:
        """:meth:`deliver`, without waiting for the outcome."""
        return asyncio.run_coroutine_threadsafe(self.deliverer.deliver(event_id, seq), self._loop)

    def wait(self) -> None:
        """Wait until every goal claimed so far is settled."""
        self._run(self.deliverer.settled())

    def stop_waiting(self) -> None:
        """A shutdown has begun: claim nothing more, hold goals rather than wait for the pace,
        and give up soon on outcomes Redis does not take (they stay in the ledger). Safe from a
        signal handler's thread."""
        self._loop.call_soon_threadsafe(self._stopping)

    def _stopping(self) -> None:
        self.deliverer.stopping = True
        self.deliverer.writer.stop()

    def close(self) -> None:
        """Finish every goal in flight and record it, then close the clients and the loop."""
        if self._loop.is_closed():
            return
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _close(self) -> None:
        self._stopping()
        await self.deliverer.settled()
        await self.deliverer.http.aclose()
        await self.deliverer.redis.aclose()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
