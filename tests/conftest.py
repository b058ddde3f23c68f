"""Shared fixtures: a flushed real Redis, quick settings, the sandbox, real worker processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.keys import Keys
from goalqueue.sandbox import Sandbox
from goalqueue.spool import Spool
from workers.engine import Engine

REDIS_URL = os.environ.get("GOALQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
API_KEY = "df_sandbox"

KEYS = Keys()  # the default namespace, which the tests' settings use


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {condition.__doc__ or condition}")
        time.sleep(interval)


@pytest.fixture
def redis_url() -> str:
    """The test database on the real Redis, flushed before each test."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail(f"these tests need a Redis at {REDIS_URL}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings with sub-second waits, pointed at a closed port until a test sets a URL."""
    return quick_settings(redis_url)


def quick_settings(broker_url: str) -> Settings:
    """Settings with sub-second waits, pointed at a closed port until a test sets a URL."""
    return Settings(
        broker_url=broker_url,
        api_key=API_KEY,
        api_url="http://127.0.0.1:9/api/v1/goals",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        http_timeout_seconds=1.0,
        visibility_timeout_seconds=5.0,
        sweep_interval_seconds=0.1,
    )


@pytest.fixture
def queue(settings: Settings) -> GoalQueue:
    return GoalQueue(settings=settings)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


Handler = Callable[[httpx.Request], object]
"""An ``httpx.MockTransport`` handler: returns a response, or a coroutine that gives one."""


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    """Starts delivery engines, a worker process's event loop with DataFast faked by
    ``httpx.MockTransport(handler)``; each one is closed after the test.

    ``engines(settings, handler, clock=..., rand=...)`` returns a started :class:`Engine`.
    """
    started: list[Engine] = []

    def start(settings: Settings, handler: Handler, **options: object) -> Engine:
        engine = Engine(settings, transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.close()


def pop_message(client: redis.Redis) -> tuple[str, int]:
    """Take the next task message off the queue as kombu's BRPOP would; returns what the task
    delivers: its id (the event id) and its argument (the sequence)."""
    raw = client.rpop(KEYS.queue)
    assert raw is not None, "the queue is empty"
    message = json.loads(raw)
    (seq,) = json.loads(message["body"])[0]
    return message["headers"]["id"], seq


@dataclass
class WorkerProcess:
    """A real ``celery -A workers worker`` process."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Workers:
    """Starts worker processes for one test and stops every one of them afterwards."""

    tmp_path: Path
    env: dict[str, str]
    started: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, *args: str, env: dict[str, str] | None = None, ready: bool = True
    ) -> WorkerProcess:
        index = len(self.started)
        log = self.tmp_path / f"worker-{index}.log"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "--loglevel=INFO",
            f"--hostname=test{index}@%h",
            "--without-mingle",
            "--without-gossip",
            *args,
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}
            )
        worker = WorkerProcess(process, log)
        self.started.append(worker)
        if ready:
            wait_for(lambda: "ready." in worker.output() or process.poll() is not None, 60)
            assert process.poll() is None, worker.output()
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def worker_env(settings: Settings, api_url: str, api_key: str = API_KEY) -> dict[str, str]:
    """The environment of a worker process that runs with ``settings`` against ``api_url``."""
    return {
        **os.environ,
        "GOALQUEUE_BROKER_URL": settings.broker_url,
        "GOALQUEUE_NAMESPACE": settings.namespace,
        "DATAFAST_API_KEY": api_key,
        "DATAFAST_API_URL": api_url,
        "GOALQUEUE_RETRY_BASE_SECONDS": str(settings.retry_base_seconds),
        "GOALQUEUE_RETRY_MAX_SECONDS": str(settings.retry_max_seconds),
        "GOALQUEUE_HTTP_TIMEOUT_SECONDS": str(settings.http_timeout_seconds),
        "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": str(settings.visibility_timeout_seconds),
        "GOALQUEUE_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
    }


@pytest.fixture
def workers(tmp_path: Path, settings: Settings, sandbox: Sandbox) -> Iterator[Workers]:
    """Real worker processes delivering to the sandbox through the test Redis."""
    pool = Workers(tmp_path, worker_env(settings, sandbox.url))
    yield pool
    pool.stop_all()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """A ``redis-server`` of the test's own, on a free port, keeping its data in ``directory``.

    AOF is on with ``appendfsync always`` and RDB snapshots are off, so a restart (clean or
    SIGKILL) keeps every write Redis acknowledged; ``extra`` adds arguments.
    """

    directory: Path
    extra: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            *self.extra,
        ]  # fmt: skip
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._answers, 20)
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop the server: SIGTERM shuts it down cleanly, SIGKILL does not."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop with ``sig`` and start again on the same port, from the same AOF."""
        self.stop(sig)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def _answers(self) -> bool:
        """redis-server answers PING"""
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")
            pytest.fail(f"redis-server exited with {self.process.returncode}:\n{log[-2000:]}")
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts private ``redis-server`` processes; each one is stopped after the test.

    ``redis_server()`` starts one with AOF on; ``redis_server("--maxmemory-policy",
    "allkeys-lru")`` adds arguments.
    """
    servers: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", extra)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


def spooled_rows(directory: Path) -> list[tuple[str, str]]:
    """(event id, payload) of every goal in the spool, file by file, read behind its back."""
    rows: list[tuple[str, str]] = []
    for path in Spool(directory).files():
        db = sqlite3.connect(path)
        try:
            rows += db.execute("SELECT event_id, payload FROM goals ORDER BY seq")
        finally:
            db.close()
    return rows
