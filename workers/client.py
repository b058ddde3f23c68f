"""The one pooled HTTP client of a worker process, and the POST of one goal."""

from __future__ import annotations

import httpx

from goalqueue.config import Settings
from goalqueue.event import GoalEvent

USER_AGENT = "goalqueue/0.1 (+https://pypi.org/project/goalqueue/)"


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


def post_goal(client: httpx.Client, url: str, event: GoalEvent) -> httpx.Response | httpx.HTTPError:
    """POST the goal once; an HTTP-level failure comes back as the error, not raised."""
    try:
        return client.post(url, json=event.api_body(), headers={"Idempotency-Key": event.event_id})
    except httpx.HTTPError as exc:
        return exc
