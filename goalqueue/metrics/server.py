"""The HTTP side of ``goalqueue metrics``: prometheus_client's WSGI app behind basic auth.

prometheus_client's own ``start_http_server`` and ``make_wsgi_app`` have no basic auth, so its
WSGI app is wrapped in a check of the ``Authorization`` header (compared in constant time) and
served by the standard library's ``wsgiref`` with a thread per request, as prometheus_client
itself serves. A Prometheus scrape every few seconds needs nothing more: no ASGI server, and no
dependency beyond prometheus-client. Only ``GET /metrics`` is served.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9808
METRICS_PATH = "/metrics"
REALM = "goalqueue metrics"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def metrics_app(registry: CollectorRegistry, credentials: tuple[str, str] | None) -> WSGIApp:
    """``GET /metrics`` for ``registry``; with ``credentials`` (user, password), only for a
    request that gives them."""
    exposition = make_wsgi_app(registry)
    expected = None if credentials is None else ":".join(credentials).encode()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if expected is not None and not _authorized(environ.get("HTTP_AUTHORIZATION"), expected):
            challenge = ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
            return _reply(start_response, "401 Unauthorized", b"unauthorized\n", [challenge])
        if environ.get("PATH_INFO") != METRICS_PATH:
            return _reply(start_response, "404 Not Found", b"see /metrics\n")
        body: Iterable[bytes] = exposition(environ, start_response)
        return body

    return app


def serve(
    app: WSGIApp, host: str, port: int, on_listening: Callable[[str], None] | None = None
) -> None:
    """Serve ``app`` on ``host``:``port`` until interrupted; ``on_listening`` gets the URL."""
    server = listen(app, host, port)
    if on_listening is not None:
        on_listening(f"http://{host}:{server.server_port}{METRICS_PATH}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def listen(app: WSGIApp, host: str, port: int) -> WSGIServer:
    """A server for ``app`` bound to ``host``:``port`` (0: a free one), not serving yet."""
    return make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)


def _authorized(header: str | None, expected: bytes) -> bool:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected)


def _reply(
    start_response: StartResponse,
    status: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    """No access log line for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
