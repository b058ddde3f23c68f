"""The one place that says which Redis the tests use, and the only code that flushes it.

A plain ``pytest`` must be safe on a contributor's machine, whose Redis on 6379 may hold real
data. So:

* ``GOALQUEUE_TEST_REDIS_URL`` set: the tests use that server, and its database (default 15) is
  the one the ``redis_url`` fixture flushes before each test; naming it is the consent;
* otherwise, when ``redis-server`` is installed, the suite starts one of its own on a free port,
  keeping nothing on disk, for the session (and sets the variable, so that anything it starts
  uses it too); each pytest-xdist worker starts its own, so that no worker flushes a database
  another is using, and none freezes or fills the server another's tests run on;
* otherwise the tests use 127.0.0.1:6379, and refuse to flush a database that holds a key the
  tests do not write (:data:`TEST_KEY_PATTERNS`).

Every other database the tests touch is on the same server: 14 for the web-framework tests, 13
for Flower's, 11 and 12 for the benchmark's smoke run (``BENCH_REDIS_URL``), 8 for the demo's.
"""

from __future__ import annotations

import atexit
import fnmatch
import os
import shutil
import signal
import subprocess
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.helpers.ports import free_port

VARIABLE = "GOALQUEUE_TEST_REDIS_URL"
STARTED_FOR = "GOALQUEUE_TEST_REDIS_STARTED_FOR"
"""Set beside :data:`VARIABLE` when the suite started that server: for which pytest-xdist worker
(``""``: a run without workers, or the controller of one). The workers inherit the controller's
environment; this tells them its server is not theirs."""
WORKER = "PYTEST_XDIST_WORKER"
DEFAULT_DB = 15
WEB_DB = 14
FLOWER_DB = 13
BENCHMARK_DBS = (11, 12)
DEMO_DB = 8
RETIRED = {"GOALQUEUE_TEST_DEMO_REDIS_URL": DEMO_DB, "GOALQUEUE_TEST_FLOWER_REDIS_URL": FLOWER_DB}
"""Variables that once named these databases one by one: set, they must agree with the above."""
TEST_KEY_PATTERNS = (
    "goalqueue*", "staging*", "production*", "prod-eu.1*", "_kombu.*", "unacked*", "bench:*",
)  # fmt: skip
"""Every key the tests write: goalqueue's namespaces in the tests, kombu's, the benchmark's."""


def _start_own_server() -> str:
    """A ``redis-server`` for this test session on a free port, stopped when the session ends."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="goalqueue-tests-redis-")
    command = [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", directory,
        "--save", "", "--appendonly", "no", "--databases", "16",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    atexit.register(_stop, process, directory)
    deadline = time.monotonic() + 20
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise pytest.UsageError(f"could not start redis-server on port {port}")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/{DEFAULT_DB}"


def _answers(port: int) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes], directory: str) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(10)
    shutil.rmtree(directory, ignore_errors=True)


def choose(environ: dict[str, str] | os._Environ[str], start: bool) -> tuple[str, bool]:
    """The tests' Redis URL, and whether a database must be checked before it is flushed;
    ``start``: a redis-server can be started (and is, setting the variable in ``environ``)."""
    named = environ.get(VARIABLE)
    this = environ.get(WORKER, "")
    if named and environ.get(STARTED_FOR, this) == this:
        return named, False
    if start:
        environ[VARIABLE], environ[STARTED_FOR] = _start_own_server(), this
        return environ[VARIABLE], False
    return f"redis://127.0.0.1:6379/{DEFAULT_DB}", True


def shared(environ: dict[str, str] | os._Environ[str]) -> bool:
    """Whether pytest-xdist workers would all use one Redis (one named, or 127.0.0.1:6379), so
    that the suite must run in one process; called after :func:`choose`."""
    return STARTED_FOR not in environ


def _server_and_database(url: str) -> tuple[str, int]:
    """(the server's URL without a database, the database) of a ``redis://`` URL."""
    parts = urlsplit(url)
    database = parts.path.strip("/") or str(DEFAULT_DB)
    if not database.isdigit():
        raise pytest.UsageError(f"{VARIABLE} must end in a database number, not {url!r}")
    if int(database) in {WEB_DB, FLOWER_DB, DEMO_DB, *BENCHMARK_DBS}:
        raise pytest.UsageError(f"{VARIABLE}: database {database} is one the tests use for more")
    return urlunsplit(parts._replace(path="")), int(database)


CHOSEN, CHECK_BEFORE_FLUSH = choose(os.environ, start=shutil.which("redis-server") is not None)
SHARED = shared(os.environ)
SERVER, MAIN_DB = _server_and_database(CHOSEN)


def url(database: int) -> str:
    """The URL of ``database`` on the tests' Redis server."""
    return f"{SERVER}/{database}"


def _check_retired() -> None:
    for name, database in RETIRED.items():
        if os.environ.get(name, url(database)) != url(database):
            raise pytest.UsageError(
                f"{name} is retired: the tests use {url(database)} ({VARIABLE})"
            )


def flush(database_url: str, *, check: bool | None = None) -> None:
    """Empty a database the tests use; with ``check`` (by default: when the suite could neither
    start a server of its own nor was told which to use), refuse one that holds somebody else's
    keys."""
    client = redis.Redis.from_url(database_url, decode_responses=True)
    try:
        if CHECK_BEFORE_FLUSH if check is None else check:
            foreign = [key for key in client.scan_iter(count=500) if not _ours(key)]
            if foreign:
                pytest.exit(
                    f"{database_url} holds keys the tests did not write (e.g. {foreign[0]!r}): "
                    f"install redis-server, or set {VARIABLE} to a database they may flush",
                    returncode=4,
                )
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail(f"these tests need a Redis at {database_url}")
    finally:
        client.close()


def _ours(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in TEST_KEY_PATTERNS)


_check_retired()
REDIS_URL = url(MAIN_DB)
WEB_REDIS_URL = url(WEB_DB)
FLOWER_REDIS_URL = url(FLOWER_DB)
DEMO_REDIS_URL = url(DEMO_DB)
