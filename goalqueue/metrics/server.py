"""The HTTP side of ``goalqueue metrics``: prometheus_client's WSGI app behind basic auth.

prometheus_client's own ``start_http_server`` and ``make_wsgi_app`` have no basic auth, so its
WSGI app is wrapped in a check of the ``Authorization`` header (compared in constant time) and
served by the standard library's ``wsgiref``. A Prometheus scrape every few seconds needs
nothing more: no ASGI server, and no dependency beyond prometheus-client. Only ``GET /metrics``
is served.

wsgiref's threaded server (prometheus_client's) starts a thread per connection and reads the
request without a timeout: 300 idle connections kept 301 threads alive for good. Here a
connection waits in a lobby (one thread, a selector) until its request arrives, and is closed if
it stays silent for ``timeout`` seconds; only then does one of ``POOL_THREADS`` threads serve
it, reading with the same timeout. At most ``LOBBY_LIMIT`` connections wait; more are closed at
once. So idle connections cost a socket each, never a thread, and a scrape is served as soon as
it asks.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9808
METRICS_PATH = "/metrics"
REALM = "goalqueue metrics"
DEFAULT_TIMEOUT = 5.0  # seconds a connection may stay silent
POOL_THREADS = 8
LOBBY_LIMIT = 1024

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
    app: WSGIApp,
    host: str,
    port: int,
    on_listening: Callable[[str], None] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Serve ``app`` on ``host``:``port`` until interrupted; ``on_listening`` gets the URL."""
    server = listen(app, host, port, timeout)
    if on_listening is not None:
        on_listening(f"http://{host}:{server.server_port}{METRICS_PATH}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def listen(app: WSGIApp, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> WSGIServer:
    """A server for ``app`` bound to ``host``:``port`` (0: a free one), not serving yet; a
    connection silent for ``timeout`` seconds is closed."""
    handler = type("Handler", (_QuietHandler,), {"timeout": timeout})
    server = make_server(host, port, app, _PooledServer, handler_class=handler)
    assert isinstance(server, _PooledServer)
    server.start(timeout)
    return server


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
    """No access log line for every scrape; a client too slow to send its request is dropped
    (``timeout``, set per server)."""

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PooledServer(WSGIServer):
    """wsgiref's server, serving each connection from a bounded pool once it has something to
    read (see the module's docstring)."""

    # socketserver's backlog of 5 has a burst of connections wait out SYN retries (1 s, 3 s, ...)
    request_queue_size = 128

    def start(self, timeout: float) -> None:
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="goalqueue-metrics")
        self._arrivals: SimpleQueue[tuple[socket.socket, Any]] = SimpleQueue()
        self._wake, self._waker = socket.socketpair()
        self._closing = threading.Event()
        self._lobby = threading.Thread(target=self._run_lobby, name="goalqueue-lobby", daemon=True)
        self._lobby.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """A new connection: into the lobby, not a thread of its own."""
        self._arrivals.put((request, client_address))
        self._waker.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._closing.set()
        self._waker.send(b"\0")
        self._lobby.join(timeout=self._timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._wake.close()
        self._waker.close()

    def _run_lobby(self) -> None:
        waiting: dict[Any, tuple[float, Any]] = {}  # connection -> (when it is dropped, address)
        with selectors.DefaultSelector() as lobby:
            lobby.register(self._wake, selectors.EVENT_READ)
            while not self._closing.is_set():
                for key, _ in lobby.select(timeout=self._timeout / 4):
                    if key.fileobj is self._wake:
                        self._wake.recv(4096)
                        self._admit(lobby, waiting)
                    else:
                        _, address = waiting.pop(key.fileobj)
                        lobby.unregister(key.fileobj)
                        self._pool.submit(self._serve, key.fileobj, address)
                now = time.monotonic()
                self._drop(lobby, waiting, [c for c, (end, _) in waiting.items() if end < now])
            self._drop(lobby, waiting, list(waiting))

    def _admit(self, lobby: selectors.BaseSelector, waiting: dict[Any, tuple[float, Any]]) -> None:
        """Every new connection into the lobby, unless it is full."""
        while True:
            try:
                connection, address = self._arrivals.get_nowait()
            except Empty:
                return
            if len(waiting) >= LOBBY_LIMIT:
                self.shutdown_request(connection)
                continue
            waiting[connection] = (time.monotonic() + self._timeout, address)
            lobby.register(connection, selectors.EVENT_READ)

    def _drop(
        self, lobby: selectors.BaseSelector, waiting: dict[Any, tuple[float, Any]], which: list[Any]
    ) -> None:
        for connection in which:
            del waiting[connection]
            lobby.unregister(connection)
            self.shutdown_request(connection)

    def _serve(self, connection: Any, address: Any) -> None:
        """Serve one connection on a pool thread, as socketserver's threads do."""
        try:
            self.finish_request(connection, address)
        except Exception:
            self.handle_error(connection, address)
        finally:
            self.shutdown_request(connection)
