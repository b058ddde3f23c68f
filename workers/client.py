"""The HTTP side of delivery: the process's one ``httpx.AsyncClient``, and the POST of one goal.

The client runs on aiohttp (``httpx_aiohttp.AiohttpTransport``) rather than httpx's own async
transport: httpcore's connection pool collapses under hundreds of concurrent requests
(encode/httpx#3215), while aiohttp keeps a request's CPU cost flat. httpx's API stays: its
requests, responses and exceptions, and ``httpx.MockTransport`` in tests.
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport

from goalqueue.config import Settings
from goalqueue.event import GoalEvent

USER_AGENT = "goalqueue/0.1 (+https://pypi.org/project/goalqueue/)"

Answer = httpx.Response | httpx.HTTPError


def build_client(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The process's client, authenticated with the API key, for ``max_in_flight`` requests.

    A ``dft_`` account token also sends ``?websiteId=``; a ``df_`` website key sends nothing
    more. TLS verification is always on, and redirects are not followed. ``transport`` replaces
    the aiohttp transport (tests pass an ``httpx.MockTransport``).
    """
    params = {"websiteId": settings.website_id} if settings.website_id else None
    limits = httpx.Limits(
        max_connections=settings.max_in_flight, max_keepalive_connections=settings.max_in_flight
    )
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {settings.api_key}", "User-Agent": USER_AGENT},
        params=params,
        timeout=httpx.Timeout(settings.http_timeout_seconds),
        transport=transport or AiohttpTransport(limits=limits),
    )


async def post_goal(client: httpx.AsyncClient, url: str, event: GoalEvent) -> Answer:
    """POST the goal once; an HTTP-level failure comes back as the error, not raised."""
    try:
        return await client.post(
            url, json=event.api_body(), headers={"Idempotency-Key": event.event_id}
        )
    except httpx.HTTPError as exc:
        return exc


def answer_class(answer: Answer) -> str:
    """What kind of answer it was, for the counters: ``2xx`` .. ``5xx``, ``timeout`` or
    ``connection_error`` (any other failure to get an answer)."""
    if isinstance(answer, httpx.Response):
        return f"{answer.status_code // 100}xx"
    if isinstance(answer, httpx.TimeoutException):
        return "timeout"
    return "connection_error"
