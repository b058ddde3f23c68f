"""The web edge, as it is deployed: a real app on a real server while Redis stops and hangs.

Each server model (gunicorn sync, gunicorn with ``--preload``, gunicorn with gevent, uvicorn
with the asyncio producer) serves its framework's app from :mod:`tests.webapps`, with the spool
set, while clients keep signing up. Redis (a ``redis-server`` of the test's own, with AOF) is
stopped and started again, then frozen with SIGSTOP for longer than the enqueue timeout. Every
signup must be answered 201 within the enqueue timeout and a margin, and a real worker must then
deliver every goal those answers named, each once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from goalqueue.sandbox import Sandbox
from goalqueue.spool import Spool
from tests.helpers.redis_server import RedisServer
from tests.helpers.scheduling import TIMED
from tests.helpers.settings import KEYS, quick_settings
from tests.helpers.waiting import wait_for
from tests.helpers.webservers import SERVERS, Answer, Traffic, WebServer, goals_of
from tests.helpers.workers import Workers, worker_env

pytestmark = [pytest.mark.integration, TIMED]

ENQUEUE_TIMEOUT = 1.0
MARGIN = 0.5
HANG_SECONDS = 2.5
SIGNUPS_PER_PHASE = 12


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(kind: str, env: dict[str, str]) -> WebServer:
        started.append(WebServer(kind, env, tmp_path / f"{kind}.log").start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("kind", list(SERVERS))
def test_every_signup_answered_is_delivered_through_a_redis_outage_and_hang(
    kind: str,
    redis_server: Callable[..., RedisServer],
    web_server: Callable[..., WebServer],
    sandbox: Sandbox,
    tmp_path: Path,
) -> None:
    # Given an app on a real server, with the spool set, and a Redis of its own
    redis = redis_server()
    spool = str(tmp_path / "spool")
    app = web_server(
        kind,
        {
            "GOALQUEUE_BROKER_URL": redis.url,
            "GOALQUEUE_SPOOL_DIR": spool,
            "WEBAPP_SPOOL_DIR": spool,  # the Django site sets it through settings.GOALQUEUE
            "GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS": str(ENQUEUE_TIMEOUT),
        },
    )
    traffic = Traffic(app.port)
    try:
        # When visitors sign up while Redis answers, is stopped, is back, and hangs
        _more_signups(traffic)
        redis.stop()
        _more_signups(traffic)
        redis.start()
        _spool_drained(spool)
        _more_signups(traffic)
        _hang(redis, traffic)
        _spool_drained(spool)
        _more_signups(traffic)
    finally:
        answers = traffic.stop()
    # Then every signup was answered 201, none later than the enqueue timeout and a margin
    assert {a.status for a in answers} == {201}, app.output()[-3000:]
    slowest = max(a.seconds for a in answers)
    assert slowest <= ENQUEUE_TIMEOUT + MARGIN, _latencies(answers)
    # And a worker delivers every goal those answers named, once
    goals = goals_of(answers)
    assert len(goals) == len(answers) == len(set(goals))
    workers = Workers(tmp_path, worker_env(quick_settings(redis.url), sandbox.url))
    try:
        workers.start()
        wait_for(lambda: set(goals) <= _delivered(sandbox), 60)
    except BaseException:
        _explain(set(goals) - _delivered(sandbox), redis, spool, sandbox)
        print(app.output()[-5000:])
        raise
    finally:
        workers.stop_all()
    assert sandbox.stats().duplicates == 0


def _more_signups(traffic: Traffic) -> None:
    target = traffic.count() + SIGNUPS_PER_PHASE
    wait_for(lambda: traffic.count() >= target, 30)


def _spool_drained(directory: str) -> None:
    """Wait until the web processes re-sent what they spooled: they send to Redis again."""
    spool = Spool(directory)
    wait_for(lambda: spool.pending() == 0, 30)


def _hang(redis: RedisServer, traffic: Traffic) -> None:
    """Freeze Redis for at least HANG_SECONDS, and until a phase of signups went through."""
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    thaw = time.monotonic() + HANG_SECONDS
    try:
        _more_signups(traffic)
        wait_for(lambda: time.monotonic() >= thaw, HANG_SECONDS + 1)
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)


def _explain(missing: set[str], redis: RedisServer, spool: str, sandbox: Sandbox) -> None:
    """Where the goals that were not delivered are (printed for a failing run)."""
    client = redis.client()
    ledger = {json.loads(raw)["i"] for raw in client.zrange(KEYS.ledger, 0, -1)}
    waiting = {json.loads(raw)["i"] for raw in client.zrange(KEYS.waiting, 0, -1)}
    print(
        f"missing {len(missing)}: ledger {len(missing & ledger)}, waiting "
        f"{len(missing & waiting)}, dead {sum(client.hexists(KEYS.dead, m) for m in missing)}, "
        f"pending {sum(client.sismember(KEYS.pending, m) for m in missing)}, spool "
        f"{Spool(spool).pending()}, queue {client.llen(KEYS.queue)}, sandbox saw "
        f"{sum(1 for e in sandbox.events() if e.idempotency_key in missing)}"
    )
    for field, letter in client.hgetall(KEYS.dead).items():
        print("dead", field, letter[:300])
    print("metrics", client.hgetall(KEYS.metrics))


def _delivered(sandbox: Sandbox) -> set[str]:
    return {e.idempotency_key for e in sandbox.state.events(status=200) if e.idempotency_key}


def _latencies(answers: list[Answer]) -> str:
    slow = sorted(answers, key=lambda a: a.seconds)[-5:]
    return "slowest requests: " + ", ".join(f"{a.seconds:.2f} s" for a in slow)
