"""A plain ``pytest`` never flushes somebody else's Redis (see tests/helpers/databases.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from tests.helpers.databases import STARTED_FOR, VARIABLE, WORKER, choose, flush, shared
from tests.helpers.redis_server import RedisServer


def test_a_named_test_redis_is_used_as_it_is() -> None:
    environ = {VARIABLE: "redis://127.0.0.1:6400/3"}
    assert choose(environ, start=True) == ("redis://127.0.0.1:6400/3", False)


@pytest.mark.integration  # starts a redis-server
def test_without_a_name_the_suite_starts_a_redis_of_its_own_and_says_so() -> None:
    # Given no test Redis named, and redis-server installed (the suite itself runs this way)
    environ: dict[str, str] = {}
    # When the tests' Redis is chosen
    chosen, check = choose(environ, start=True)
    # Then it is a fresh server on a free port, named for whatever the tests start
    assert environ[VARIABLE] == chosen and not check
    assert redis.Redis.from_url(chosen).dbsize() == 0
    assert not chosen.startswith("redis://127.0.0.1:6379/")


def test_without_redis_server_the_default_redis_is_checked_before_it_is_flushed() -> None:
    assert choose({}, start=False) == ("redis://127.0.0.1:6379/15", True)


@pytest.mark.parametrize("environ", [{VARIABLE: "redis://127.0.0.1:6400/3"}, {}])
def test_one_redis_named_or_the_default_is_shared_by_every_worker(environ: dict[str, str]) -> None:
    choose(environ, start=False)
    assert shared(environ)


def test_a_redis_the_suite_started_for_this_worker_is_used_as_it_is() -> None:
    # (what the worker's own processes see: its celery workers, web servers, the demo)
    environ = {VARIABLE: "redis://127.0.0.1:6400/15", STARTED_FOR: "gw1", WORKER: "gw1"}
    assert choose(environ, start=True) == ("redis://127.0.0.1:6400/15", False)
    assert not shared(environ)


@pytest.mark.integration  # starts a redis-server
def test_a_pytest_xdist_worker_starts_a_redis_of_its_own_not_the_one_it_inherited() -> None:
    # Given a worker whose environment names the Redis its controller started
    controllers = "redis://127.0.0.1:6400/15"
    environ = {VARIABLE: controllers, STARTED_FOR: "", WORKER: "gw0"}
    # When the tests' Redis is chosen
    chosen, check = choose(environ, start=True)
    # Then it is a fresh server of the worker's own, named for whatever the worker starts
    assert chosen != controllers and not check
    assert (environ[VARIABLE], environ[STARTED_FOR]) == (chosen, "gw0")
    assert redis.Redis.from_url(chosen).dbsize() == 0
    assert not shared(environ)


def test_a_database_holding_keys_the_tests_did_not_write_is_refused(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Given a contributor's Redis with data of their own beside the tests' keys
    server = redis_server()
    client = server.client()
    client.set("goalqueue:seq", 3)
    client.set("sessions:alice", "precious")
    # When the tests would flush it, checking first
    with pytest.raises(pytest.exit.Exception, match="sessions:alice"):
        flush(server.url, check=True)
    # Then nothing was flushed
    assert client.get("sessions:alice") == "precious"
    # And a database holding only the tests' keys is flushed
    client.delete("sessions:alice")
    flush(server.url, check=True)
    assert client.dbsize() == 0
