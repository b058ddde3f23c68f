"""The HTTP side of delivery: the process's one ``httpx.AsyncClient``, and the POST of one goal.

The client runs on aiohttp (``httpx_aiohttp.AiohttpTransport``) rather than httpx's own async
transport: httpcore's connection pool collapses under hundreds of concurrent requests
(encode/httpx#3215), while aiohttp keeps a request's CPU cost flat. httpx's API stays: its
requests, responses and exceptions, and ``httpx.MockTransport`` in tests.

A request that gets no answer becomes a :class:`workers.policy.Failure` here, named from the
error that caused it. httpx-aiohttp's own translation cannot be trusted for that: it turns every
``aiohttp.ClientConnectionError`` (a refused port, a reset, a TLS failure) into
``httpx.ConnectTimeout``, and leaves some aiohttp errors (a malformed answer) untranslated. The
aiohttp error it translated stays on the chain (``raise ... from``), so :func:`failure` names a
failure by the innermost error that says what happened.
"""

from __future__ import annotations

import json
import ssl

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from workers.policy import Failed, Failure

USER_AGENT = "goalqueue/0.1 (+https://pypi.org/project/goalqueue/)"

Answer = httpx.Response | Failure

# What a request's failure is, by the errors in its chain, most specific first: aiohttp's, then
# httpx's (for httpx's own transports and ``MockTransport``). A bare ``ssl.SSLError`` says
# nothing alone (an established connection's abrupt end raises one): only a connection that
# could not be made because of it is a TLS failure.
_FAILURES: tuple[tuple[type[BaseException], Failed], ...] = (
    (aiohttp.ClientSSLError, Failed.TLS),
    (aiohttp.ServerFingerprintMismatch, Failed.TLS),
    (aiohttp.ConnectionTimeoutError, Failed.TIMEOUT_BEFORE_SEND),
    (aiohttp.ServerTimeoutError, Failed.TIMEOUT_AFTER_SEND),
    (aiohttp.ClientConnectorError, Failed.REFUSED),
    (aiohttp.ClientConnectionError, Failed.RESET),
    (aiohttp.ClientPayloadError, Failed.RESET),
    (httpx.ConnectTimeout, Failed.TIMEOUT_BEFORE_SEND),
    (httpx.PoolTimeout, Failed.TIMEOUT_BEFORE_SEND),
    (httpx.WriteTimeout, Failed.TIMEOUT_BEFORE_SEND),
    (httpx.TimeoutException, Failed.TIMEOUT_AFTER_SEND),
    (httpx.ConnectError, Failed.REFUSED),
    (httpx.ReadError, Failed.RESET),
    (httpx.WriteError, Failed.RESET),
)


def build_client(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The process's client, authenticated with the API key, for ``max_in_flight`` requests.

    TLS verification is always on, and redirects are not followed. ``transport`` replaces the
    aiohttp transport (tests pass an ``httpx.MockTransport``).
    """
    limits = httpx.Limits(
        max_connections=settings.max_in_flight, max_keepalive_connections=settings.max_in_flight
    )
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {settings.api_key}", "User-Agent": USER_AGENT},
        timeout=httpx.Timeout(settings.http_timeout_seconds),
        transport=transport or AiohttpTransport(limits=limits),
    )


class GoalPoster:
    """POSTs goals on ``client`` (see :func:`build_client`) to the goals endpoint.

    Each request is built from parts made once per process: the parsed URL (a ``dft_`` account
    token also sends ``?websiteId=``, a ``df_`` website key nothing more), the client's headers
    and its timeout, and sent with ``client.send`` (httpx's "request instances"). Through
    ``client.post(url_string, json=...)`` httpx would parse the URL and merge the client's
    headers, cookies and parameters again for every goal: about a tenth of a worker's CPU per
    goal (measured in docs/benchmarks.md).
    """

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        params = {"websiteId": settings.website_id} if settings.website_id else None
        self.client = client
        self.url = httpx.URL(settings.api_url, params=params)
        self._headers = [*client.headers.raw, (b"Content-Type", b"application/json")]
        self._extensions = {"timeout": client.timeout.as_dict()}

    async def post(self, event: GoalEvent) -> Answer:
        """POST the goal once; a request that got no answer comes back as its failure."""
        body = json.dumps(
            event.api_body(), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        request = httpx.Request(
            "POST",
            self.url,
            headers=[*self._headers, (b"Idempotency-Key", event.event_id.encode())],
            content=body,
            extensions=self._extensions,
        )
        try:
            return await self.client.send(request)
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            return failure(exc)


def failure(exc: BaseException) -> Failure:
    """What went wrong with a request that got no answer: named by the innermost error of its
    chain that says (httpx-aiohttp's translation wraps aiohttp's error, which may wrap TLS's)."""
    chain = _chain(exc)
    for cause in reversed(chain):
        named = next((failed for cls, failed in _FAILURES if isinstance(cause, cls)), None)
        if named is Failed.REFUSED and any(isinstance(error, ssl.SSLError) for error in chain):
            named = Failed.TLS
        if named is not None:
            return Failure(named, _describe(cause))
    origin = next((cause for cause in chain if not isinstance(cause, httpx.HTTPError)), exc)
    return Failure(Failed.OTHER, _describe(origin))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors that caused it, outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
