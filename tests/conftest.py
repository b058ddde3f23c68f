"""Fixtures only, built on :mod:`tests.helpers`: a flushed real Redis, quick settings, the
sandbox, delivery engines, real worker and redis-server processes.

Every test is marked ``integration`` (real Redis, real processes, the network) or ``unit``
(fakeredis, ``httpx.MockTransport``, pure logic): ``integration`` when it uses one of
:data:`REAL_FIXTURES` (directly or through another fixture) or its module or itself says so,
``unit`` otherwise. A unit test that connects a socket or starts a process fails.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.sandbox import Sandbox
from tests.helpers.databases import REDIS_URL, SHARED, VARIABLE, flush
from tests.helpers.datafast import Handler
from tests.helpers.isolation import Isolation
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import quick_settings
from tests.helpers.workers import Workers, worker_env
from workers.engine import Engine

REAL_FIXTURES = frozenset({"redis_url", "redis_server", "sandbox", "workers"})
"""The fixtures that start or reach real things; every test that uses one is an integration
test."""


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """pytest-xdist workers (``-n`` in the addopts) each start a Redis of their own; when every
    one would use the same Redis (named, or 127.0.0.1:6379), the tests run in one process."""
    if SHARED and config.pluginmanager.hasplugin("xdist"):
        config.option.numprocesses = 0


def pytest_report_header() -> str | None:
    if SHARED:
        return f"one Redis for every test ({VARIABLE} or 127.0.0.1:6379): no pytest-xdist workers"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        real = REAL_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("unit") and real:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {sorted(real)}")
        if real and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_isolation(request: pytest.FixtureRequest) -> Iterator[None]:
    """A unit test may not connect a socket or start a process."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    isolation = Isolation()
    with pytest.MonkeyPatch.context() as patch:
        isolation.install(patch)
        yield
    isolation.check()


@pytest.fixture
def redis_url() -> str:
    """The test database on the real Redis, flushed before each test."""
    flush(REDIS_URL)
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


@pytest.fixture
def queue(settings: Settings) -> GoalQueue:
    return GoalQueue(settings=settings)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture
def engines() -> Iterator[Callable[..., Engine]]:
    """Starts delivery engines, a worker process's event loop with DataFast faked by
    ``httpx.MockTransport(handler)``; each one is closed after the test.

    ``engines(settings, handler, clock=..., rand=...)`` returns a started :class:`Engine`.
    """
    started: list[Engine] = []

    def start(settings: Settings, handler: Handler, **options: object) -> Engine:
        engine = Engine(settings, transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]
        started.append(engine.start())
        return engine

    yield start
    for engine in started:
        engine.close()


@pytest.fixture
def workers(tmp_path: Path, settings: Settings, sandbox: Sandbox) -> Iterator[Workers]:
    """Real worker processes delivering to the sandbox through the test Redis."""
    pool = Workers(tmp_path, worker_env(settings, sandbox.url))
    yield pool
    pool.stop_all()


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


@pytest.fixture
def private_redis(redis_server: Callable[..., RedisServer]) -> RedisServer:
    """A private ``redis-server`` (AOF on) that a test may stop and start again."""
    return redis_server()


@pytest.fixture
def private_workers(
    tmp_path: Path, settings: Settings, sandbox: Sandbox, private_redis: RedisServer
) -> Iterator[Workers]:
    """Real worker processes (or nodes) delivering to the sandbox through ``private_redis``."""
    pool = Workers(
        tmp_path, worker_env(replace(settings, broker_url=private_redis.url), sandbox.url)
    )
    yield pool
    pool.stop_all()
