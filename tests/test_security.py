"""Security: the API key stays secret, TLS is verified, bad settings fail at start, and event data
cannot drive the operator's terminal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
import redis
from httpx_aiohttp import AiohttpTransport

from goalqueue import GoalQueue, NotEnqueued
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.sandbox import Sandbox
from tests.helpers.deadletters import settle
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS, quick_settings
from tests.helpers.tls import self_signed_certificate
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers, worker_env
from workers.client import Answer, GoalPoster, build_client
from workers.policy import Failed, Failure

CANARY = "df_SECRET_canary_123"


def goalqueue_cli(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GOALQUEUE_BROKER_URL": broker_url}
    command = [sys.executable, "-c", "from goalqueue.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- the API key


class PubSubRecorder:
    """Everything published on a Redis (Celery's task events travel this way, unstored)."""

    def __init__(self, client: redis.Redis) -> None:
        self.messages: list[bytes] = []
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe("*")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "pmessage":
                self.messages.append(bytes(message["data"]))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.pubsub.close()


def redis_holds(client: redis.Redis, needle: bytes) -> list[str]:
    """Keys whose name or value holds ``needle``; values read with DUMP (RDB compression is off
    on the test's Redis, so DUMP shows every string as it is stored) and by type."""
    hits = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[object] = [key, client.dump(key)]
        if kind == b"hash":
            values += [*client.hgetall(key).items()]
        elif kind == b"list":
            values += client.lrange(key, 0, -1)
        elif kind == b"zset":
            values += client.zrange(key, 0, -1)
        elif kind == b"set":
            values += client.smembers(key)
        elif kind == b"string":
            values.append(client.get(key))
        if any(needle in _bytes(value) for value in values):
            hits.append(_bytes(key).decode(errors="replace"))
    return hits


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, tuple):
        return b"".join(map(_bytes, value))
    return b"" if value is None else str(value).encode()


def aof_holds(server: RedisServer, needle: bytes) -> list[str]:
    """AOF files holding ``needle``: the AOF has every write ever made, deleted keys included."""
    files = [p for p in server.directory.rglob("*") if p.is_file() and "aof" in p.name]
    assert files, "the test Redis keeps no AOF"
    return [p.name for p in files if needle in p.read_bytes()]


@pytest.fixture
def server(redis_server: Callable[..., RedisServer]) -> RedisServer:
    return redis_server("--rdbcompression", "no")


def test_the_api_key_is_nowhere_in_redis_the_logs_or_the_dead_letters(
    server: RedisServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    # Given a worker that logs everything, with a distinctive key DataFast accepts
    settings = replace(quick_settings(server.url), api_key=CANARY)
    sandbox.set_key(CANARY)
    sandbox.register_visitors(*(f"v{i}" for i in range(30)), mode="registered")
    sandbox.add_bots("bot")
    raw = redis.Redis.from_url(server.url)
    published = PubSubRecorder(raw)
    pool = Workers(tmp_path, worker_env(settings, sandbox.url, api_key=CANARY))
    try:
        worker = pool.start("-c", "4", "--loglevel=DEBUG")
        queue = GoalQueue(settings=settings)
        # When goals meet every kind of answer: 200, 400, 404, 429, 503 and 401
        sandbox.fail_next(429, count=2, retry_after=1)
        ids = queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(10)])
        queue.track_goal("bot", "signup")
        queue.track_goal("stranger", "signup")
        wait_for(lambda: sandbox.state.count(429) == 2)
        sandbox.fail_next(503, count=3)
        ids += queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(10, 20)])
        wait_for(lambda: sandbox.state.count(503) == 3)
        sandbox.set_key("df_another_key")
        ids += queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(20, 30)])
        wait_for(lambda: sandbox.state.count(401) >= 1)
        sandbox.set_key(CANARY)
        wait_for(lambda: set(ids) <= {e.idempotency_key for e in sandbox.events(status=200)}, 60)
        wait_for(lambda: raw.hlen(KEYS.dead) == 2)
        dead_list = goalqueue_cli(server.url, "dead", "list", "--json")
    finally:
        published.stop()
        pool.stop_all()
    log = worker.output()

    # Then DataFast saw the key: the worker did use it
    assert sandbox.stats().by_status.keys() >= {200, 400, 401, 404, 429, 503}
    # And the key is in no Redis key or value, and in no write Redis ever logged to its AOF
    needle = CANARY.encode()
    assert redis_holds(raw, needle) == []
    assert aof_holds(server, needle) == []
    assert not [m for m in published.messages if needle in m], "a published message holds it"
    # And in no dead letter
    assert dead_list.returncode == 0 and len(json.loads(dead_list.stdout)) == 2
    assert CANARY not in dead_list.stdout
    # And in no line of the worker's DEBUG log, which did log the requests
    assert "DEBUG" in log and "HTTP Request: POST" in log
    assert CANARY not in log
    # And a Redis that keeps keys under memory pressure draws no warning
    assert "maxmemory-policy" not in log


def test_the_secret_scans_find_what_they_look_for(server: RedisServer) -> None:
    """The scans above would see the key if it were there (a control for the test itself)."""
    client = redis.Redis.from_url(server.url)
    needle = b"control-canary-456"
    client.hset("some:hash", "field", b"x" * 500 + needle + b"y" * 500)
    client.zadd("some:zset", {b"a" * 300 + needle: 1})
    assert sorted(redis_holds(client, needle)) == ["some:hash", "some:zset"]
    client.delete("some:hash", "some:zset")
    assert redis_holds(client, needle) == []
    assert aof_holds(server, needle) != []


# --------------------------------------------------------------------------- TLS


def test_the_worker_http_client_verifies_tls_and_follows_no_redirect() -> None:
    settings = replace(quick_settings("redis://127.0.0.1:1/0"), api_key=CANARY)
    client = build_client(settings)
    transport = client._transport
    assert isinstance(transport, AiohttpTransport)
    context = transport.ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert client.follow_redirects is False


@pytest.fixture
def self_signed_https(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate; yields its URL, the
    certificate, and the Authorization headers it received."""
    cert, key = self_signed_certificate(tmp_path)
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api/v1/goals", cert, received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_the_worker_refuses_a_certificate_it_cannot_verify_before_sending_the_key(
    self_signed_https: tuple[str, Path, list[str]],
) -> None:
    url, cert, received = self_signed_https
    settings = replace(quick_settings("redis://127.0.0.1:1/0"), api_key=CANARY, api_url=url)
    event = GoalEvent("e1", "v", "signup", enqueued_at=time.time())
    # Given a client that trusts the certificate: the server works
    with httpx.Client(verify=ssl.create_default_context(cafile=cert)) as trusting:
        assert trusting.post(url, headers={"Authorization": "Bearer x"}).status_code == 200
    # When the worker's client posts a goal there

    async def post() -> Answer:
        async with build_client(settings) as client:
            return await GoalPoster(client, settings).post(event)

    result = asyncio.run(post())
    # Then the TLS handshake fails, and the key never left the process
    assert isinstance(result, Failure) and result.failed is Failed.TLS
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert received == ["Bearer x"]


# --------------------------------------------------------------------------- bad configuration

BAD_CONFIG = {
    "missing key": ({}, "DATAFAST_API_KEY is not set"),
    "dft_ token without website id": (
        {"DATAFAST_API_KEY": "dft_token"},
        "DATAFAST_WEBSITE_ID is not set",
    ),
    "malformed broker URL": (
        {"DATAFAST_API_KEY": "df_key", "GOALQUEUE_BROKER_URL": "redis//localhost:6379"},
        "GOALQUEUE_BROKER_URL must look like redis://host:6379/0",
    ),
    "negative retry value": (
        {"DATAFAST_API_KEY": "df_key", "GOALQUEUE_RETRY_BASE_SECONDS": "-1"},
        "GOALQUEUE_RETRY_BASE_SECONDS must be a positive",
    ),
}


def start_worker_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATAFAST_", "GOALQUEUE_"))}
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--without-mingle"],
        env={**clean, "GOALQUEUE_BROKER_URL": "redis://127.0.0.1:1/0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def bad_config_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """One worker start per bad setting (each a few seconds: run once, checked twice)."""
    return {case: start_worker_with(env) for case, (env, _) in BAD_CONFIG.items()}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_a_worker_with_a_bad_setting_exits_naming_it(
    case: str, bad_config_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = bad_config_runs[case]
    assert result.returncode != 0
    assert BAD_CONFIG[case][1] in result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_a_worker_with_a_bad_setting_says_so_in_one_line_without_a_traceback(
    case: str, bad_config_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    output = bad_config_runs[case].stdout + bad_config_runs[case].stderr
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if BAD_CONFIG[case][1] in line]) == 1


# --------------------------------------------------------------------------- Redis credentials


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that asks for a password."""
    server = RedisServer(tmp_path_factory.mktemp("locked"), ("--requirepass", "right-one"))
    yield server.start()
    server.stop()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("", "asks for a password: put it in GOALQUEUE_BROKER_URL"),
        ("wrong-one", "refused the user or password"),
    ],
)
def test_a_redis_password_problem_is_one_clear_line(
    locked_redis: RedisServer, password: str, says: str
) -> None:
    url = locked_redis.url.replace("redis://", f"redis://:{password}@" if password else "redis://")
    with pytest.raises(NotEnqueued) as raised:
        GoalQueue(broker_url=url).track_goal("v", "signup")
    assert says in str(raised.value) and "\n" not in str(raised.value)
    assert "wrong-one" not in str(raised.value)


@pytest.mark.integration
def test_a_worker_whose_redis_refuses_its_password_exits_in_one_line(
    locked_redis: RedisServer,
) -> None:
    url = locked_redis.url.replace("redis://", "redis://:wrong-one@")
    result = start_worker_with({"GOALQUEUE_BROKER_URL": url, "DATAFAST_API_KEY": "df_test"})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    assert "refused the user or password in GOALQUEUE_BROKER_URL" in line
    assert "wrong-one" not in output


# --------------------------------------------------------------------------- untrusted input

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\rover\x9b1m\x00\x7f"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def test_dead_letters_and_stats_print_event_data_with_control_characters_escaped(
    server: RedisServer,
) -> None:
    # Given a dead letter whose description, metadata and DataFast error carry terminal escapes
    # (and visitor and name too, as if Redis had been written to directly)
    client = server.client()
    event = GoalEvent(
        event_id="evil-1",
        visitor_id=f"visitor{ESCAPES}",
        name=f"name{ESCAPES}",
        enqueued_at=time.time(),
        metadata={"note": f"meta{ESCAPES}"},
        description=f"description{ESCAPES}",
    ).attempted(time.time(), 400, f"DataFast says{ESCAPES}")
    settle(client, [("", DeadLetter.of(event, "bad_request"))])
    client.hset(KEYS.pause, mapping={"until": time.time() + 60, "reason": f"why{ESCAPES}"})

    # When the operator lists the dead letters and the stats, as a table and as JSON
    outputs = {
        args: goalqueue_cli(server.url, *args)
        for args in [("dead", "list"), ("dead", "list", "--json"), ("stats",), ("stats", "--json")]
    }

    # Then no control character reaches the terminal, and the escapes show as text
    for args, result in outputs.items():
        assert result.returncode == 0, (args, result.stderr)
        assert not CONTROL.search(result.stdout), (args, result.stdout)
    table = outputs[("dead", "list")].stdout
    assert "DataFast says\\x1b]0;owned\\x07" in table and "visitor\\x1b" in table
    (listed,) = json.loads(outputs[("dead", "list", "--json")].stdout)
    assert (listed["description"], listed["error"]) == (f"description{ESCAPES}", event.last_error)
    assert "why\\x1b" in outputs[("stats",)].stdout


# --------------------------------------------------------------------------- Redis settings


def test_a_worker_warns_at_start_when_redis_may_evict_goals(
    redis_server: Callable[..., RedisServer], sandbox: Sandbox, tmp_path: Path
) -> None:
    lossy = redis_server("--maxmemory-policy", "allkeys-lru")
    pool = Workers(tmp_path, worker_env(quick_settings(lossy.url), sandbox.url))
    try:
        worker = pool.start("-c", "1")
        wait_for(lambda: "maxmemory-policy" in worker.output(), 10)
    finally:
        for started in pool.started:
            started.process.send_signal(signal.SIGKILL)
            started.process.wait(timeout=10)
    (line,) = [line for line in worker.output().splitlines() if "maxmemory-policy" in line]
    assert "'allkeys-lru'" in line and "may evict queued goals" in line and "noeviction" in line
