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

import click
import redis
from packaging.version import Version

from goalqueue import connections
from goalqueue.config import ENV_NAMES, Settings
from goalqueue.demo.errors import BrokerUnavailable, DemoFailed
from goalqueue.demo.processes import POLL_SECONDS, STOP_SECONDS, free_port, stop_process
from goalqueue.errors import ConfigError
from goalqueue.keys import PER_CALL, Keys
from goalqueue.urls import redact

# The demo runs in goalqueue's default namespace.
DEMO_KEYS = Keys()
# What a demo run leaves in a Redis database: goalqueue's keys and kombu's bookkeeping.
DEMO_KEY_PATTERNS = (f"{DEMO_KEYS.namespace}*", "_kombu.*")
# fakeredis 2.40's TcpFakeServer hangs up after any error reply: redis-py's EVALSHA, NOSCRIPT,
# SCRIPT LOAD on the same connection then fails, and tasks die halfway through a delivery.
FAKEREDIS_AT_LEAST = Version("2.41")


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
        settings = Settings(broker_url=url)
    except ConfigError as exc:
        raise BrokerUnavailable(str(exc)) from None
    client = connections.client(settings, socket_timeout=2, socket_connect_timeout=2)
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
        found = list(client.scan_iter(pattern, count=PER_CALL))
        for start in range(0, len(found), PER_CALL):
            client.delete(*found[start : start + PER_CALL])


# --------------------------------------------------------------------------- redis-server


def _redis_server(stack: ExitStack) -> Broker:
    executable = shutil.which("redis-server")
    if executable is None:
        raise BrokerUnavailable("no redis-server on PATH")
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="goalqueue-demo-")))
    port = free_port()
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


def _wait_for_redis(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    client = connections.client(
        Settings(broker_url=url), socket_timeout=1, socket_connect_timeout=1
    )
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


def fakeredis_version() -> str:
    """The installed fakeredis's version; BrokerUnavailable when it cannot serve the demo."""
    if not all(importlib.util.find_spec(name) for name in ("fakeredis", "lupa")):
        raise BrokerUnavailable("fakeredis with Lua is not installed: pip install 'fakeredis[lua]'")
    version = importlib.metadata.version("fakeredis")
    if Version(version) < FAKEREDIS_AT_LEAST:
        raise BrokerUnavailable(
            f"fakeredis {version} hangs up on a client after an error reply: "
            f"pip install 'fakeredis[lua]>={FAKEREDIS_AT_LEAST}'"
        )
    return version


def _fakeredis(stack: ExitStack) -> Broker:
    version = fakeredis_version()
    server = fake_redis_server(("127.0.0.1", 0))
    thread = threading.Thread(
        target=server.serve_forever, name="goalqueue-demo-fakeredis", daemon=True
    )
    thread.start()
    stack.callback(_stop_fake_redis, server, thread)
    host, port = server.socket.getsockname()[:2]
    return Broker(
        f"redis://{host}:{port}/0",
        f"fakeredis {version}, an in-process Redis-protocol server on {host}:{port}",
    )


def fake_redis_server(address: tuple[str, int]) -> socketserver.TCPServer:
    """fakeredis's public ``TcpFakeServer``, its connections without Nagle's delay, running
    scripts flagged with a ``#!lua`` line.

    It writes every reply as its own small TCP segment and does not set TCP_NODELAY, so the
    replies of kombu's pipelines wait on Nagle and delayed ACKs (~40 ms each): with fakeredis
    2.41 the demo takes ~31 s instead of ~11 s. Accepted sockets inherit TCP_NODELAY from the
    listening socket (Linux, BSD, macOS), so setting it on ``server.socket`` (socketserver's
    public attribute) is enough.

    fakeredis 2.41 cannot compile a script that starts with Redis 7's ``#!lua flags=...`` line
    (goalqueue's workers flag theirs ``allow-oom``), and has no maxmemory to heed the flags for:
    its script cache (the one attribute of fakeredis's own touched here) hands out each script
    without that line, under the SHA1 of the script as loaded.
    """
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(address)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.fake_server.script_cache = _UnflaggedScripts()
    return server


class _UnflaggedScripts(dict[bytes, bytes]):
    """A script cache that hands out each script without its ``#!lua`` line."""

    def __getitem__(self, sha: bytes) -> bytes:
        script = super().__getitem__(sha)
        return script.partition(b"\n")[2] if script.startswith(b"#!") else script


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
