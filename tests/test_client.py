"""Requests that get no answer, named for what went wrong: the client's :func:`failure`.

First a table: each aiohttp error passed through httpx-aiohttp's own translation (which calls
most of them ``ConnectTimeout``), and httpx's errors as other transports raise them. Then real
sockets, through a worker's engine on the real aiohttp transport and the real Redis: a refused
port, a connection reset after the request, a TLS server with a self-signed certificate, a
listener that never accepts, a redirect and a slow answer from the sandbox; each checked in what
the worker records (its result, the goal's last error, the pause) and in the counters.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import pytest
import redis
from httpx_aiohttp.transport import map_aiohttp_exceptions

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from goalqueue.sandbox import Sandbox
from tests.helpers.messages import pop_message
from tests.helpers.ports import free_port
from tests.helpers.settings import KEYS
from tests.helpers.tls import self_signed_certificate
from workers.client import failure
from workers.engine import Engine
from workers.policy import Failed, Failure

# A stand-in for aiohttp's ConnectionKey: its errors only read these for their message.
KEY: Any = SimpleNamespace(host="datafa.st", port=443, ssl=True, is_ssl=True)
REQUEST: Any = SimpleNamespace(real_url="https://datafa.st/api/v1/goals")


def through_httpx_aiohttp(error: BaseException) -> BaseException:
    """``error`` as httpx-aiohttp hands it on: translated, the original as its cause."""
    try:
        with map_aiohttp_exceptions():
            raise error
    except BaseException as translated:  # whatever it became is the point
        return translated
    raise AssertionError("unreachable")


def with_cause(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


certificate_error = ssl.SSLCertVerificationError(1, "certificate verify failed")


@pytest.mark.parametrize(
    ("error", "failed"),
    [
        pytest.param(
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused")),
            Failed.REFUSED,
            id="aiohttp-refused",
        ),
        pytest.param(
            aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known")),
            Failed.REFUSED,
            id="aiohttp-dns",
        ),
        pytest.param(
            aiohttp.ClientConnectorCertificateError(KEY, certificate_error),
            Failed.TLS,
            id="aiohttp-certificate",
        ),
        pytest.param(
            aiohttp.ClientConnectorSSLError(KEY, ssl.SSLError(1, "wrong version number")),
            Failed.TLS,
            id="aiohttp-ssl",
        ),
        pytest.param(
            aiohttp.ConnectionTimeoutError("Connection timeout to host"),
            Failed.TIMEOUT_BEFORE_SEND,
            id="aiohttp-connect-timeout",
        ),
        pytest.param(
            aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
            Failed.TIMEOUT_AFTER_SEND,
            id="aiohttp-read-timeout",
        ),
        pytest.param(
            aiohttp.ServerDisconnectedError(), Failed.RESET, id="aiohttp-server-disconnected"
        ),
        pytest.param(
            aiohttp.ClientOSError(104, "Connection reset by peer"), Failed.RESET, id="aiohttp-reset"
        ),
        pytest.param(
            aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
            Failed.RESET,
            id="aiohttp-connection-reset",
        ),
        pytest.param(
            aiohttp.ClientPayloadError("Response payload is not completed"),
            Failed.RESET,
            id="aiohttp-payload",
        ),
    ],
)
def test_aiohttp_errors_are_named_whatever_httpx_aiohttp_calls_them(
    error: BaseException, failed: Failed
) -> None:
    # Given an aiohttp error as httpx-aiohttp hands it on
    translated = through_httpx_aiohttp(error)
    assert isinstance(translated, httpx.HTTPError)
    # When the client names it, Then it is named for the aiohttp error behind it
    assert failure(translated) == Failure(failed, f"{type(error).__name__}: {error}")


def test_an_ssl_error_after_the_connection_was_made_is_not_a_tls_failure() -> None:
    # Given a connection that ends abruptly while aiohttp reads the answer over TLS
    disconnected = aiohttp.ServerDisconnectedError()
    disconnected.__context__ = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    # Then it is a reset: nothing to pause everyone for
    assert failure(through_httpx_aiohttp(disconnected)).failed is Failed.RESET


def test_httpx_aiohttp_calls_a_refused_connection_a_connect_timeout() -> None:
    # The premise of failure(): without it, a refused port would be counted as a timeout
    refused = aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused"))
    assert type(through_httpx_aiohttp(refused)) is httpx.ConnectTimeout


def test_an_aiohttp_error_httpx_aiohttp_leaves_untranslated_is_a_connection_error() -> None:
    error = aiohttp.ClientResponseError(REQUEST, (), status=400, message="Invalid header")
    assert failure(error).failed is Failed.OTHER


@pytest.mark.parametrize(
    ("error", "failed"),
    [
        (httpx.ConnectError("refused"), Failed.REFUSED),
        (httpx.ConnectTimeout("x"), Failed.TIMEOUT_BEFORE_SEND),
        (httpx.PoolTimeout("x"), Failed.TIMEOUT_BEFORE_SEND),
        (httpx.WriteTimeout("x"), Failed.TIMEOUT_BEFORE_SEND),
        (httpx.ReadTimeout("x"), Failed.TIMEOUT_AFTER_SEND),
        (httpx.ReadError("x"), Failed.RESET),
        (httpx.WriteError("x"), Failed.RESET),
        (httpx.RemoteProtocolError("x"), Failed.OTHER),
        (httpx.ProxyError("x"), Failed.OTHER),
        (with_cause(httpx.ConnectError("x"), certificate_error), Failed.TLS),
        (with_cause(httpx.ReadError("x"), ssl.SSLEOFError(8, "EOF")), Failed.RESET),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_httpx_errors_without_aiohttp_behind_them_are_named_by_their_class(
    error: httpx.HTTPError, failed: Failed
) -> None:
    assert failure(error).failed is failed


# ----------------------------------------------------------------------------- real sockets


@pytest.fixture
def deliver_once(
    settings: Settings, redis_client: redis.Redis
) -> Iterator[Callable[[str], tuple[str, GoalEvent | None]]]:
    """Enqueue a goal and have a worker's engine, on the real aiohttp transport, try it once
    at ``url``; returns the result and the goal as it waits (None when it does not)."""
    engines: list[Engine] = []

    def deliver(url: str, **changes: Any) -> tuple[str, GoalEvent | None]:
        worker_settings = replace(settings, api_url=url, **changes)
        GoalQueue(settings=worker_settings).track_goal("v1", "signup")
        engine = Engine(worker_settings).start()
        engines.append(engine)
        result = engine.run(*pop_message(redis_client)).summary
        waiting = redis_client.zrange(KEYS.waiting, 0, -1)
        return result, GoalEvent.from_json(waiting[0]) if waiting else None

    yield deliver
    for engine in engines:
        engine.close()


def counted(client: redis.Redis, field: str) -> int:
    return int(client.hget(KEYS.metrics, field) or 0)


class Listener:
    """A TCP listener on 127.0.0.1 whose every accepted connection goes to ``handle`` on a
    thread of its own (``handle=None``: connections are never accepted)."""

    def __init__(self, handle: Callable[[socket.socket], None] | None, backlog: int = 8) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        if handle is not None:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        assert self.handle is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listen() -> Iterator[Callable[..., Listener]]:
    listeners: list[Listener] = []

    def start(handle: Callable[[socket.socket], None] | None, backlog: int = 8) -> Listener:
        listeners.append(Listener(handle, backlog))
        return listeners[-1]

    yield start
    for listener in listeners:
        listener.close()


def reset_after_the_request(conn: socket.socket) -> None:
    """Read the request, then close with SO_LINGER 0: the peer gets a TCP reset."""
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_a_refused_port_is_a_refused_connection(
    deliver_once: Callable[..., tuple[str, GoalEvent | None]], redis_client: redis.Redis
) -> None:
    # Given nothing listening at DATAFAST_API_URL's port
    url = f"http://127.0.0.1:{free_port()}/api/v1/goals"
    # When a worker tries a goal
    result, event = deliver_once(url)
    # Then it is retried later as a refused connection, counted as one, not as a timeout
    assert result == "waiting (connection_refused)"
    assert event is not None and event.unknown_attempts == 0
    assert (event.last_error or "").startswith("connection_refused: ClientConnectorError")
    assert counted(redis_client, "answers:connection_refused") == 1
    assert counted(redis_client, "answers:timeout_before_send") == 0


def test_a_connection_reset_after_the_request_is_a_reset(
    deliver_once: Callable[..., tuple[str, GoalEvent | None]],
    redis_client: redis.Redis,
    listen: Callable[..., Listener],
) -> None:
    # Given a server that reads the request and resets the connection
    listener = listen(reset_after_the_request)
    # When a worker tries a goal
    result, event = deliver_once(f"http://127.0.0.1:{listener.port}/api/v1/goals")
    # Then it is retried later as a reset connection
    assert result == "waiting (connection_reset)"
    assert event is not None and (event.last_error or "").startswith("connection_reset: ")
    assert counted(redis_client, "answers:connection_reset") == 1
    assert counted(redis_client, "answers:timeout_before_send") == 0


def test_a_listener_that_never_accepts_is_a_timeout_before_sending(
    deliver_once: Callable[..., tuple[str, GoalEvent | None]],
    redis_client: redis.Redis,
    listen: Callable[..., Listener],
) -> None:
    # Given a listener whose one-place accept queue is already full: a new connection hangs
    listener = listen(None, backlog=0)
    fillers = fill_the_accept_queue(listener.port)
    try:
        # When a worker tries a goal there, with a short timeout
        url = f"http://127.0.0.1:{listener.port}/api/v1/goals"
        result, event = deliver_once(url, http_timeout_seconds=0.3)
    finally:
        for filler in fillers:
            filler.close()
    # Then the goal was never sent: retried as a timeout before sending, no unknown attempt
    assert result == "waiting (timeout_before_send)"
    assert event is not None and event.unknown_attempts == 0
    assert counted(redis_client, "answers:timeout_before_send") == 1


def fill_the_accept_queue(port: int) -> list[socket.socket]:
    """Connections to ``port`` until one hangs: its accept queue is full (the kernel drops
    further SYNs); returns the ones that got in."""
    fillers: list[socket.socket] = []
    while len(fillers) < 16:
        try:
            fillers.append(socket.create_connection(("127.0.0.1", port), timeout=0.2))
        except TimeoutError:
            return fillers
    raise AssertionError("the listener kept accepting connections")


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server TLS context with a self-signed certificate for 127.0.0.1."""
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_a_tls_failure_pauses_everyone_as_a_configuration_error(
    deliver_once: Callable[..., tuple[str, GoalEvent | None]],
    redis_client: redis.Redis,
    listen: Callable[..., Listener],
    self_signed: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given DATAFAST_API_URL served over TLS with a certificate no CA vouches for
    def handshake(conn: socket.socket) -> None:
        try:
            self_signed.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    listener = listen(handshake)
    # When a worker tries a goal
    result, event = deliver_once(f"https://127.0.0.1:{listener.port}/api/v1/goals")
    # Then delivery pauses for everyone with an operator-facing error, instead of retrying
    assert result == "waiting (tls)"
    assert redis_client.hget(KEYS.pause, "reason") == "tls"
    assert event is not None and "certificate verify failed" in (event.last_error or "")
    assert "TLS failed with DATAFAST_API_URL" in caplog.text
    assert counted(redis_client, "answers:tls_error") == 1
    assert counted(redis_client, "deferred:tls") == 1
    assert counted(redis_client, "answers:timeout_before_send") == 0


def test_a_redirect_from_the_sandbox_pauses_everyone(
    deliver_once: Callable[..., tuple[str, GoalEvent | None]],
    redis_client: redis.Redis,
    sandbox: Sandbox,
) -> None:
    # Given a DATAFAST_API_URL that answers 301
    sandbox.set_faults(odd_answer="redirect")
    # When a worker tries a goal
    result, event = deliver_once(sandbox.url)
    # Then delivery pauses for everyone, the redirect's target in the goal's last error
    assert result == "waiting (redirect)"
    assert redis_client.hget(KEYS.pause, "reason") == "redirect"
    assert event is not None and event.last_status == 301
    assert "datafast.example" in (event.last_error or "")
    assert counted(redis_client, "answers:3xx") == 1
    assert counted(redis_client, "deferred:redirect") == 1


def test_a_slow_answer_is_a_timeout_after_sending(
    deliver_once: Callable[..., tuple[str, GoalEvent | None]],
    redis_client: redis.Redis,
    sandbox: Sandbox,
) -> None:
    # Given a sandbox slower than the HTTP timeout
    sandbox.set_faults(latency_ms=600)
    # When a worker tries a goal
    result, event = deliver_once(sandbox.url, http_timeout_seconds=0.2)
    # Then DataFast may have it: one unknown attempt, and a pause for everyone (slow)
    assert result == "waiting (slow)"
    assert event is not None and event.unknown_attempts == 1
    assert counted(redis_client, "answers:timeout_after_send") == 1
    assert counted(redis_client, "answers:timeout_before_send") == 0
