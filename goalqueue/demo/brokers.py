"""Finding a broker for the demo: the Redis in the environment, a redis-server, or fakeredis.

Each way either returns a ``Broker`` (registering on the stack whatever stops or cleans it up)
or raises ``BrokerUnavailable`` saying why not.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import redis

from goalqueue import keys
from goalqueue.config import ENV_NAMES, Settings, redact
from goalqueue.demo.errors import BrokerUnavailable, DemoFailed
from goalqueue.demo.processes import POLL_SECONDS, STOP_SECONDS, stop_process
from goalqueue.errors import ConfigError

# What a demo run leaves in a Redis database: goalqueue's keys and kombu's bookkeeping.
DEMO_KEY_PATTERNS = (f"{keys.QUEUE}*", "_kombu.*", "unacked*")


@dataclass(frozen=True)
class Broker:
    url: str
    description: str


# --------------------------------------------------------------------------- env


def _env_broker(stack: ExitStack) -> Broker:
    url = os.environ.get(ENV_NAMES["broker_url"], "").strip()
    if not url:
        raise BrokerUnavailable("GOALQUEUE_BROKER_URL is not set")
    try:
        Settings(broker_url=url)
    except ConfigError as exc:
        raise BrokerUnavailable(str(exc)) from None
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    stack.callback(client.close)
    try:
        size = client.dbsize()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"no Redis answers at {redact(url)} ({exc})") from None
    if size:
        raise BrokerUnavailable(
            f"the database at {redact(url)} holds {size} key(s); the demo only uses an empty one"
        )
    stack.callback(forget_demo_keys, client)
    return Broker(url, f"the Redis at GOALQUEUE_BROKER_URL ({redact(url)}), an empty database")


def forget_demo_keys(client: redis.Redis) -> None:
    """Delete what a demo run leaves in a Redis database that was empty when it began."""
    for pattern in DEMO_KEY_PATTERNS:
        found = list(client.scan_iter(pattern, count=500))
        for start in range(0, len(found), 500):
            client.delete(*found[start : start + 500])


# --------------------------------------------------------------------------- redis-server


def _redis_server(stack: ExitStack) -> Broker:
    executable = shutil.which("redis-server")
    if executable is None:
        raise BrokerUnavailable("no redis-server on PATH")
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="goalqueue-demo-")))
    port = _free_port()
    log = workdir / "redis.log"
    command = [
        executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack.callback(stop_process, process)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_redis(url, process, log)
    return Broker(url, f"a redis-server started for this demo on 127.0.0.1:{port}, nothing on disk")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_redis(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(POLL_SECONDS)
    finally:
        client.close()
    lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
    raise BrokerUnavailable(f"redis-server did not start: {lines[-1]}")


# --------------------------------------------------------------------------- fakeredis


def _fakeredis(stack: ExitStack) -> Broker:
    if not all(importlib.util.find_spec(name) for name in ("fakeredis", "lupa")):
        raise BrokerUnavailable("fakeredis with Lua is not installed: pip install 'fakeredis[lua]'")
    server = _fake_redis_server(("127.0.0.1", 0))
    thread = threading.Thread(
        target=server.serve_forever, name="goalqueue-demo-fakeredis", daemon=True
    )
    thread.start()
    stack.callback(_stop_fake_redis, server, thread)
    host, port = server.socket.getsockname()[:2]
    version = importlib.metadata.version("fakeredis")
    return Broker(
        f"redis://{host}:{port}/0",
        f"fakeredis {version}, an in-process Redis-protocol server on {host}:{port}",
    )


def _fake_redis_server(address: tuple[str, int]) -> socketserver.TCPServer:
    """fakeredis's ``TcpFakeServer``, with two fixes a real Celery worker needs (fakeredis 2.40).

    * It closes a client's connection right after any error reply. redis-py runs a script with
      EVALSHA and, on NOSCRIPT, loads it with SCRIPT LOAD on the same connection: that fails,
      and tasks die halfway through a delivery. Here an error reply leaves the connection open,
      as Redis does.
    * It writes every reply as its own small TCP segment without TCP_NODELAY, so each reply of
      kombu's pipelines waits ~40 ms for a delayed ACK (Nagle): about 10 goals/s instead of
      hundreds. Here accepted sockets set TCP_NODELAY.
    """
    from fakeredis import TcpFakeServer

    class Server(TcpFakeServer):
        def __init__(self, server_address: tuple[str, int]) -> None:
            super().__init__(server_address)
            self.RequestHandlerClass = _keeping_connections_open(self.RequestHandlerClass)

        def get_request(self) -> tuple[socket.socket, Any]:
            connection, client_address = super().get_request()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return connection, client_address

    return Server(address)


def _keeping_connections_open(handler: Any) -> Any:
    class Handler(handler):
        def setup(self) -> None:
            super().setup()
            client = self.current_client
            client.read_response = _returning_errors(client.read_response)

    return Handler


def _returning_errors(read: Callable[..., Any]) -> Callable[..., Any]:
    """``read`` with an error reply returned, to be sent, instead of raised (which hangs up)."""

    def read_response(**kwargs: Any) -> Any:
        try:
            return read(**kwargs)
        except redis.ResponseError as exc:
            return exc

    return read_response


def _stop_fake_redis(server: socketserver.TCPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=STOP_SECONDS)


# --------------------------------------------------------------------------- choosing

BROKERS: dict[str, Callable[[ExitStack], Broker]] = {
    "env": _env_broker,
    "redis-server": _redis_server,
    "fakeredis": _fakeredis,
}


def start_broker(choice: str, stack: ExitStack) -> Broker:
    """The first broker that works, of all (``auto``) or just the one chosen."""
    names = list(BROKERS) if choice == "auto" else [choice]
    reasons = []
    for name in names:
        try:
            return BROKERS[name](stack)
        except BrokerUnavailable as exc:
            click.echo(f"Not using {name}: {exc}")
            reasons.append(f"{name}: {exc}")
    raise DemoFailed("no broker to run on (" + "; ".join(reasons) + ")")
