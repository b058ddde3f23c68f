"""``goalqueue demo`` as a user runs it, on each kind of broker, and how it judges a run."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from goalqueue.demo import BURST_429, BURST_503, BrokerUnavailable, Sent, problems, table_rows
from goalqueue.demo.brokers import fake_redis_server, fakeredis_version
from tests.helpers.databases import DEMO_REDIS_URL

DEMO = [str(Path(sys.executable).with_name("goalqueue")), "demo"]
SENTINEL = "goalqueue-demo-test:user-data"

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="no redis-server on PATH"
)


def environment(**extra: str) -> dict[str, str]:
    """This environment without any goalqueue or DataFast setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOALQUEUE_", "DATAFAST_"))}
    return {**env, **extra}


def run_demo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEMO, *args], env=env, capture_output=True, text=True, timeout=120)


def outcome_table(output: str) -> dict[str, list[int]]:
    """The demo's final table: kind of goal -> [sent, delivered, dead-lettered, requests]."""
    lines = output.split("\n  kind of goal", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return {kind: [int(n) for n in numbers] for kind, *numbers in rows}


def assert_every_goal_ended_as_expected(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    table = outcome_table(result.stdout)
    # 200 successes, plus one more request for each 429 and each 503 of the bursts
    assert table["valid"] == [200, 200, 0, 200 + BURST_429 + BURST_503]
    for kind in ("of which met a 429", "of which met a 503"):
        sent, delivered, dead, requests = table[kind]
        assert sent >= 1 and (delivered, dead) == (sent, 0) and requests > sent
    assert table["bot visitor (400)"] == [1, 0, 1, 1]
    assert table["unknown visitor (404)"] == [1, 0, 1, 1]
    assert "OK: every valid goal was delivered" in result.stdout


@pytest.fixture
def demo_db() -> Iterator[redis.Redis]:
    """The demo tests' database on the real Redis; it must be empty."""
    client = redis.Redis.from_url(DEMO_REDIS_URL, decode_responses=True)
    try:
        size = client.dbsize()
    except redis.ConnectionError:
        pytest.fail(f"these tests need a Redis at {DEMO_REDIS_URL}")
    if size:
        pytest.fail(f"{DEMO_REDIS_URL} holds {size} key(s); the demo tests need it empty")
    yield client
    client.delete(SENTINEL)
    client.close()


@pytest.mark.integration
def test_demo_runs_on_the_redis_at_goalqueue_broker_url_and_empties_it_afterwards(
    demo_db: redis.Redis,
) -> None:
    result = run_demo(env=environment(GOALQUEUE_BROKER_URL=DEMO_REDIS_URL))
    assert_every_goal_ended_as_expected(result)
    assert f"Broker: the Redis at GOALQUEUE_BROKER_URL ({DEMO_REDIS_URL})" in result.stdout
    assert demo_db.dbsize() == 0


@pytest.mark.integration
@needs_redis_server
def test_demo_leaves_a_database_with_data_alone_and_starts_its_own_redis_server(
    demo_db: redis.Redis,
) -> None:
    # Given a broker URL whose database holds someone's data
    demo_db.set(SENTINEL, "precious")
    # When the demo runs
    result = run_demo(env=environment(GOALQUEUE_BROKER_URL=DEMO_REDIS_URL))
    # Then it says so, runs on a redis-server of its own, and the data is untouched
    assert "Not using env: the database at" in result.stdout
    assert "holds 1 key(s)" in result.stdout
    assert "Broker: a redis-server started for this demo on 127.0.0.1:" in result.stdout
    assert_every_goal_ended_as_expected(result)
    assert demo_db.keys("*") == [SENTINEL] and demo_db.get(SENTINEL) == "precious"


@pytest.mark.integration
def test_demo_runs_on_fakeredis_when_there_is_nothing_else() -> None:
    result = run_demo("--broker", "fakeredis", env=environment())
    assert "Broker: fakeredis " in result.stdout
    assert "an in-process Redis-protocol server" in result.stdout
    assert_every_goal_ended_as_expected(result)


@pytest.mark.integration
def test_demo_exits_non_zero_when_valid_goals_are_not_delivered() -> None:
    # Given a sandbox that knows no visitor: every goal is refused with 404
    result = run_demo("--broker", "fakeredis", "--unknown-visitors", env=environment())
    # Then the demo fails, says why, and keeps the worker's log for a look
    assert result.returncode == 1
    assert "FAILED: 200 of 200 valid goals were not delivered." in result.stderr
    assert outcome_table(result.stdout)["valid"][:3] == [200, 0, 200]
    log = re.search(r"Worker log: (\S+)", result.stderr)
    assert log is not None and Path(log[1]).is_file()
    shutil.rmtree(Path(log[1]).parent)


@pytest.mark.integration
def test_demo_without_a_broker_says_why_and_starts_nothing() -> None:
    result = run_demo("--broker", "env", env=environment())
    assert result.returncode == 1
    assert "no broker to run on (env: GOALQUEUE_BROKER_URL is not set)" in result.stderr
    assert "Worker" not in result.stdout + result.stderr


@pytest.mark.integration
@needs_redis_server
def test_ctrl_c_stops_the_worker_and_the_redis_server_the_demo_started() -> None:
    # Given a demo that is running with its own redis-server and worker
    process = subprocess.Popen(
        [*DEMO, "--broker", "redis-server"], env=environment(), stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    seen = ""
    while "Worker: pid" not in seen:
        line = process.stdout.readline()
        assert line, f"the demo ended early:\n{seen}"
        seen += line
    port = re.search(r"started for this demo on 127\.0\.0\.1:(\d+)", seen)
    worker = re.search(r"Worker: pid (\d+)", seen)
    assert port is not None and worker is not None
    # When the user presses Ctrl-C
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    # Then the demo exits 130 and nothing it started is left
    assert process.returncode == 130
    with pytest.raises(ProcessLookupError):
        os.kill(int(worker[1]), 0)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=int(port[1]), socket_connect_timeout=1).ping()


VALID, LIMITED, FAILED, BOT, UNKNOWN = "valid", "limited", "failed", "bot", "unknown"
SENT = Sent(valid=[VALID, LIMITED, FAILED], bot=BOT, unknown=UNKNOWN)
ALL_WELL = {VALID: [200], LIMITED: [429, 200], FAILED: [503, 503, 200], BOT: [400], UNKNOWN: [404]}
DEAD = {BOT: 400, UNKNOWN: 404}


def test_the_table_counts_each_kind_of_goal_and_every_request() -> None:
    rows = {row.kind.strip(): row for row in table_rows(SENT, ALL_WELL, DEAD)}
    assert [(r.sent, r.delivered, r.dead, r.requests) for r in rows.values()] == [
        (3, 3, 0, 6),
        (1, 1, 0, 2),
        (1, 1, 0, 3),
        (1, 0, 1, 1),
        (1, 0, 1, 1),
    ]
    assert list(rows) == [
        "valid",
        "of which met a 429",
        "of which met a 503",
        "bot visitor (400)",
        "unknown visitor (404)",
    ]


@pytest.mark.parametrize(
    ("answers", "dead", "expected"),
    [
        (ALL_WELL, DEAD, []),
        ({**ALL_WELL, FAILED: [503, 503]}, DEAD, ["1 of 3 valid goals were not delivered"]),
        (
            {**ALL_WELL, BOT: [200]},
            {UNKNOWN: 404},
            ["the bot visitor's goal is not a dead letter with status 400"],
        ),
        (
            ALL_WELL,
            {BOT: 400, UNKNOWN: 400},
            ["the unknown visitor's goal is not a dead letter with status 404"],
        ),
        ({}, {}, [
            "3 of 3 valid goals were not delivered",
            "the bot visitor's goal is not a dead letter with status 400",
            "the unknown visitor's goal is not a dead letter with status 404",
        ]),
    ],
)  # fmt: skip
def test_a_run_succeeds_only_when_valid_goals_are_delivered_and_failures_dead_lettered(
    answers: dict[str, list[int]], dead: dict[str, int | None], expected: list[str]
) -> None:
    assert problems(SENT, answers, dead) == expected


@pytest.mark.integration
def test_the_fake_redis_server_keeps_a_connection_after_an_error_reply_and_skips_nagle() -> None:
    # Given the demo's fakeredis server, and one connection to it
    server = fake_redis_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.socket.getsockname()[:2]
    client = redis.Redis(host=host, port=port, single_connection_client=True)
    try:
        connection = client.client_id()
        # When a command fails, then a script runs (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA)
        with pytest.raises(redis.ResponseError):
            client.execute_command("NO-SUCH-COMMAND")
        result = client.register_script("return 7")()
        # Then the same connection answered both, and replies go out without Nagle's delay
        assert (result, client.client_id()) == (7, connection)
        assert server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_fakeredis_that_hangs_up_after_error_replies_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.40.0")
    with pytest.raises(BrokerUnavailable, match=r"fakeredis 2\.40\.0 hangs up .*>=2\.41"):
        fakeredis_version()
