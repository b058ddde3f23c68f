"""The HTTP side of delivery: keep-alive clients, one per thread, and the POST of one goal."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

from goalqueue.config import Settings
from goalqueue.event import GoalEvent

USER_AGENT = "goalqueue/0.1 (+https://pypi.org/project/goalqueue/)"

Answer = httpx.Response | httpx.HTTPError


def build_client(settings: Settings, pool_size: int) -> httpx.Client:
    """A keep-alive client sized to the pool, authenticated with the API key.

    A ``dft_`` account token also sends ``?websiteId=``; a ``df_`` website key sends nothing
    more. TLS verification is always on.
    """
    params = {"websiteId": settings.website_id} if settings.website_id else None
    return httpx.Client(
        headers={"Authorization": f"Bearer {settings.api_key}", "User-Agent": USER_AGENT},
        params=params,
        timeout=httpx.Timeout(settings.http_timeout_seconds),
        limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
    )


def post_goal(client: httpx.Client, url: str, event: GoalEvent) -> Answer:
    """POST the goal once; an HTTP-level failure comes back as the error, not raised."""
    try:
        return client.post(url, json=event.api_body(), headers={"Idempotency-Key": event.event_id})
    except httpx.HTTPError as exc:
        return exc


class Sender:
    """POSTs goals to DataFast, every thread on a keep-alive connection of its own.

    One client per thread rather than one pool shared by all: httpcore's shared pool costs
    O(connections x waiting requests) per request (encode/httpcore#1035), which a worker with
    dozens of delivery threads pays on every goal.
    """

    def __init__(
        self, settings: Settings, make_client: Callable[[], httpx.Client] | None = None
    ) -> None:
        self.url = settings.api_url
        self._make_client = make_client or (lambda: build_client(settings, 1))
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def post(self, event: GoalEvent) -> Answer:
        """POST ``event`` on the calling thread's connection."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._make_client()
            with self._lock:
                self._clients.append(client)
        return post_goal(client, self.url, event)

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
