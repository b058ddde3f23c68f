"""Serving the sandbox with uvicorn: in the foreground (``serve``) or in a thread (``Sandbox``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import uvicorn

from goalqueue.sandbox.answers import RetryAfter
from goalqueue.sandbox.app import build_app
from goalqueue.sandbox.faults import Faults
from goalqueue.sandbox.goals import GOALS_PATH
from goalqueue.sandbox.state import RecordedEvent, SandboxState, SandboxStats, VisitorMode

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

_GRACEFUL_SHUTDOWN_SECONDS = 3
_STARTUP_TIMEOUT_SECONDS = 10.0
_BACKLOG = 2048


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP (inherited by accepted sockets) lets asyncio set TCP_NODELAY;
    # without it every keep-alive response stalls ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _server(state: SandboxState) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(state),
        lifespan="off",
        log_level="warning",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        backlog=_BACKLOG,
    )
    return uvicorn.Server(config)


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    state: SandboxState | None = None,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve the sandbox in the foreground until interrupted (Ctrl+C / SIGTERM).

    ``on_listening`` is called with the base URL once the port is bound.
    """
    sock = _bind(host, port)
    if on_listening is not None:
        on_listening(_base_url(sock))
    _server(state if state is not None else SandboxState()).run(sockets=[sock])


class Sandbox:
    """The sandbox served by uvicorn in a background thread; use it as a context manager.

    >>> with Sandbox() as sandbox:                      # doctest: +SKIP
    ...     sandbox.fail_next(503, count=2)
    ...     httpx.post(sandbox.url, json=..., headers={"Authorization": "Bearer df_sandbox"})
    """

    def __init__(
        self, state: SandboxState | None = None, *, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        self.state = state if state is not None else SandboxState()
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``; the admin endpoints live under ``/_sandbox/``."""
        if self._base_url is None:
            raise RuntimeError("the sandbox is not running")
        return self._base_url

    @property
    def url(self) -> str:
        """The goals endpoint, to use as DATAFAST_API_URL."""
        return self.base_url + GOALS_PATH

    def start(self, timeout: float = _STARTUP_TIMEOUT_SECONDS) -> Self:
        """Bind, start serving in a daemon thread and wait until requests are answered."""
        if self._thread is not None:
            raise RuntimeError("the sandbox is already running")
        sock = _bind(self.host, self.port)
        self.port, self._base_url = sock.getsockname()[1], _base_url(sock)
        server = self._server = _server(self.state)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="goalqueue-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Release hanging requests, shut the server down and wait for its thread."""
        if self._server is None or self._thread is None:
            return
        self.state.set_faults({"hang": False})
        self._server.should_exit = True
        self._thread.join(timeout=_GRACEFUL_SHUTDOWN_SECONDS + 5)
        self._server = self._thread = self._base_url = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Conveniences over ``state`` for in-process callers.

    def events(self, status: int | None = None) -> list[RecordedEvent]:
        """Recorded requests in arrival order, optionally only those answered with ``status``."""
        return self.state.events(status)

    def stats(self) -> SandboxStats:
        """Counts by status, distinct accepted idempotency keys and duplicates."""
        return self.state.stats()

    def wait_for_events(
        self, count: int, *, status: int | None = None, timeout: float = 10.0
    ) -> list[RecordedEvent]:
        """Poll until at least ``count`` requests (of ``status``) are recorded; return them all.

        Raises TimeoutError if they do not arrive within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.state.count(status) < count:
            if time.monotonic() > deadline:
                got = self.state.count(status)
                raise TimeoutError(f"waited {timeout}s for {count} events, got {got}")
            time.sleep(0.005)
        return self.state.events(status)

    def set_faults(self, **changes: Any) -> Faults:
        """Partially update faults, e.g. ``set_faults(latency_ms=50, rate_limit=2)``.

        ``rate_limit={"per_second": 200, "retry_after": 1}`` is a real limit of 200 a second;
        the other forms refuse every goal (see ``parse_fault_changes``).
        """
        return self.state.set_faults(changes)

    def fail_next(self, status: int, count: int = 1, retry_after: RetryAfter | None = None) -> None:
        """Answer the next ``count`` goal requests with ``status``."""
        fail_next = {"status": status, "count": count, "retry_after": retry_after}
        self.state.set_faults({"fail_next": fail_next})

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.state.clear_faults()

    def set_key(self, key: str) -> None:
        """Change the accepted API key at run time."""
        self.state.key = key

    def register_visitors(self, *visitors: str, mode: VisitorMode | None = None) -> None:
        """Mark visitors as having pageviews; optionally switch the visitor mode."""
        self.state.register_visitors(visitors, mode)

    def add_bots(self, *visitors: str) -> None:
        """Mark visitors as bots."""
        self.state.add_bots(visitors)

    def reset(self) -> None:
        """Forget recorded requests and clear faults."""
        self.state.reset()
