"""The one place that says which Redis the tests use.

``GOALQUEUE_TEST_REDIS_URL`` names the server (default ``redis://127.0.0.1:6379/15``); its
database (default 15) is the one the ``redis_url`` fixture flushes before each test. Every other
database the tests touch is on the same server, so a run against another port touches nothing
else: 14 for the web-framework tests, 13 for Flower's, 11 and 12 for the benchmark's smoke run
(``BENCH_REDIS_URL``), 8 for the demo's.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import pytest

VARIABLE = "GOALQUEUE_TEST_REDIS_URL"
WEB_DB = 14
FLOWER_DB = 13
BENCHMARK_DBS = (11, 12)
DEMO_DB = 8
RETIRED = {"GOALQUEUE_TEST_DEMO_REDIS_URL": DEMO_DB, "GOALQUEUE_TEST_FLOWER_REDIS_URL": FLOWER_DB}
"""Variables that once named these databases one by one: set, they must agree with the above."""


def _server_and_database(url: str) -> tuple[str, int]:
    """(the server's URL without a database, the database) of a ``redis://`` URL."""
    parts = urlsplit(url)
    database = parts.path.strip("/") or "15"
    if not database.isdigit():
        raise pytest.UsageError(f"{VARIABLE} must end in a database number, not {url!r}")
    if int(database) in {WEB_DB, FLOWER_DB, DEMO_DB, *BENCHMARK_DBS}:
        raise pytest.UsageError(f"{VARIABLE}: database {database} is one the tests use for more")
    return urlunsplit(parts._replace(path="")), int(database)


SERVER, MAIN_DB = _server_and_database(os.environ.get(VARIABLE, "redis://127.0.0.1:6379/15"))


def url(database: int) -> str:
    """The URL of ``database`` on the tests' Redis server."""
    return f"{SERVER}/{database}"


def _check_retired() -> None:
    for name, database in RETIRED.items():
        if os.environ.get(name, url(database)) != url(database):
            raise pytest.UsageError(
                f"{name} is retired: the tests use {url(database)} ({VARIABLE})"
            )


_check_retired()
REDIS_URL = url(MAIN_DB)
WEB_REDIS_URL = url(WEB_DB)
FLOWER_REDIS_URL = url(FLOWER_DB)
DEMO_REDIS_URL = url(DEMO_DB)
