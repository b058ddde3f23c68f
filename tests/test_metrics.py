"""Monitoring against the real thing: ``goalqueue metrics`` scraped by a real Prometheus while
real worker processes deliver to the sandbox; the counters' bookkeeping in SETTLE on a real
Redis; basic auth; and the alerting rules through promtool.

Prometheus comes from Debian's ``prometheus`` package (``.ci/run`` installs it). Without it the
Prometheus tests skip outside CI and fail in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.metrics.cli import metrics_command
from goalqueue.metrics.server import POOL_THREADS
from goalqueue.sandbox import Sandbox
from goalqueue.tally import LATENCY_BOUNDS, REQUEST_BOUNDS, read
from tests.helpers.ports import free_port
from tests.helpers.scheduling import TIMED
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers
from workers.scripts import Settlement, SweeperScripts

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "goalqueue.json"
GOALQUEUE = Path(sys.executable).parent / "goalqueue"
LOGIN = ("prometheus", "s3cret-metrics")


def tool(name: str) -> str:
    """The path of a Prometheus program: a skip outside CI when missing, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: apt-get install prometheus (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Exporter:
    """A running ``goalqueue metrics`` process."""

    process: subprocess.Popen[str]
    port: int
    announced: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample, by name and labels."""
        text = httpx.get(self.url, auth=LOGIN, timeout=5).raise_for_status().text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
def exporter(settings: Settings) -> Iterator[Exporter]:
    """``goalqueue metrics`` on a free port (default host), with basic auth from the
    environment."""
    port = free_port()
    env = {
        **os.environ,
        "GOALQUEUE_BROKER_URL": settings.broker_url,
        "GOALQUEUE_METRICS_BASIC_AUTH": ":".join(LOGIN),
    }
    process = subprocess.Popen(
        [str(GOALQUEUE), "metrics", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        announced = process.stdout.readline()
        assert "goalqueue metrics on" in announced, announced + process.stdout.read()
        yield Exporter(process, port, announced)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Prometheus:
    """A real Prometheus scraping the exporter every second, with goalqueue's alerts."""

    url: str

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's samples, by labels (without ``__name__``, job, instance)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        result = answer.raise_for_status().json()["data"]["result"]
        drop = {"__name__", "job", "instance"}
        return {
            tuple(sorted((k, v) for k, v in item["metric"].items() if k not in drop)): float(
                item["value"][1]
            )
            for item in result
        }

    def value(self, promql: str) -> float | None:
        """The one sample's value, or None when there is none."""
        samples = self.query(promql)
        assert len(samples) <= 1, samples
        return next(iter(samples.values()), None)

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=5).raise_for_status().json()["data"]


@pytest.fixture
def prometheus(exporter: Exporter, tmp_path: Path) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    port = free_port()
    password = tmp_path / "metrics-password"
    password.write_text(LOGIN[1])
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{ALERTS}"]
scrape_configs:
  - job_name: goalqueue
    static_configs: [{{targets: ["127.0.0.1:{exporter.port}"]}}]
    basic_auth: {{username: {LOGIN[0]}, password_file: "{password}"}}
"""
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")

    def scraping() -> bool:
        """Prometheus is up and has scraped the exporter"""
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        try:
            return server.value("goalqueue_redis_up") == 1
        except httpx.HTTPError:
            return False

    try:
        wait_for(scraping, 30, 0.2)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def stats_json(settings: Settings) -> dict[str, Any]:
    """What ``goalqueue stats --json`` prints."""
    env = {**os.environ, "GOALQUEUE_BROKER_URL": settings.broker_url}
    result = subprocess.run(
        [str(GOALQUEUE), "stats", "--json"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def test_prometheus_sees_what_goalqueue_stats_and_the_sandbox_count(
    queue: GoalQueue,
    sandbox: Sandbox,
    workers: Workers,
    prometheus: Prometheus,
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    # Given the sandbox knowing one visitor and failing its first three requests with 503
    sandbox.register_visitors("known", mode="registered")
    sandbox.fail_next(503, count=3)
    # (a pause of 2 s, then 4 s after the probe's 401: the goal waits out the second one in
    # "waiting" while the workers stop; the quick settings' 0.1 s let their sweeper bring it back
    # to the queue first when the stop was slow)
    workers.start(
        "-c", "4", env={"GOALQUEUE_RETRY_BASE_SECONDS": "2", "GOALQUEUE_RETRY_MAX_SECONDS": "4"}
    )
    # When 20 good goals and one for an unknown visitor are delivered
    good = [queue.track_goal("known", "signup", metadata={"n": str(i)}) for i in range(20)]
    queue.track_goal("stranger", "signup")
    wait_for(lambda: sandbox.stats().distinct_keys == 20 and redis_client.hlen(KEYS.dead) == 1)
    wait_for(lambda: redis_client.zcard(KEYS.ledger) + redis_client.zcard(KEYS.waiting) == 0)
    # And then DataFast stops accepting the API key, and a goal meets the 401
    sandbox.set_key("df_another_key")
    queue.track_goal("known", "signup")
    wait_for(lambda: redis_client.hget(KEYS.pause, "reason") == "auth")
    wait_for(lambda: sandbox.stats().by_status.get(401, 0) >= 2)  # and a probe after it
    workers.stop_all()  # a warm shutdown records every answer it had
    stats = stats_json(settings)
    counts = sandbox.stats()
    assert counts.duplicates == 0 and len(set(good)) == 20

    # Then Prometheus scrapes the numbers goalqueue stats shows and the sandbox counted
    def deferred() -> float | None:
        return prometheus.value('goalqueue_goals_total{result="deferred",reason="auth"}')

    wait_for(lambda: deferred() == counts.by_status[401], 15, 0.2)
    for name in ("queued", "waiting", "in_flight"):
        assert prometheus.value(f"goalqueue_{name}_goals") == stats[name], name
    assert stats["waiting"] == 1 and stats["pause_reason"] == "auth"
    assert prometheus.value('goalqueue_goals_total{result="delivered"}') == stats["delivered"]
    assert stats["delivered"] == counts.distinct_keys == 20
    assert prometheus.value('goalqueue_dead_letters{reason="unknown_visitor"}') == stats["dead"]
    assert prometheus.value('goalqueue_goals_total{result="dead",reason="unknown_visitor"}') == 1
    assert prometheus.value('goalqueue_goals_total{result="transient"}') == counts.by_status[503]
    answers = prometheus.query("goalqueue_datafast_answers_total > 0")
    assert answers == {
        (("status_class", "2xx"),): counts.by_status[200],
        (("status_class", "4xx"),): counts.by_status[404] + counts.by_status[401],
        (("status_class", "5xx"),): counts.by_status[503],
    }
    assert prometheus.value("goalqueue_datafast_request_duration_seconds_count") == counts.total
    assert prometheus.value("goalqueue_delivery_latency_seconds_count") == 20
    assert prometheus.value('goalqueue_delivery_latency_seconds_bucket{le="+Inf"}') == 20
    # And the pause shows with its reason, and its alert is on its way (pending for its `for:`)
    assert prometheus.query("goalqueue_paused == 1") == {(("reason", "auth"),): 1}
    assert (prometheus.value("goalqueue_oldest_waiting_age_seconds") or 0) > 0
    rules = [rule["name"] for group in prometheus.get("/api/v1/rules")["groups"]
             for rule in group["rules"]]  # fmt: skip
    assert "GoalQueueBadApiKey" in rules
    assert sorted(rules) == sorted(re.findall(r"- alert: (\w+)", ALERTS.read_text()))

    def bad_key_alert() -> bool:
        """GoalQueueBadApiKey is pending"""
        alerts = prometheus.get("/api/v1/alerts")["alerts"]
        return any(a["labels"]["alertname"] == "GoalQueueBadApiKey" for a in alerts)

    wait_for(bad_key_alert, 10, 0.2)


@TIMED
def test_counters_stay_right_when_workers_are_sigkilled_and_restarted(
    queue: GoalQueue,
    sandbox: Sandbox,
    workers: Workers,
    exporter: Exporter,
    redis_client: redis.Redis,
) -> None:
    # Given 600 goals delivered by two workers, each with 5 requests in flight to an endpoint
    # that answers in 50 ms
    sandbox.set_faults(latency_ms=50)
    ids = set(queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(600)]))
    slow = {"GOALQUEUE_MAX_IN_FLIGHT": "5"}
    live = [workers.start("-c", "4", env=slow), workers.start("-c", "4", env=slow)]
    # When a worker is SIGKILLed twice mid-flow, each time replaced by a new one
    floors = []
    for threshold in (150, 350):
        wait_for(lambda threshold=threshold: sandbox.stats().accepted >= threshold, 30, 0.01)
        floors.append(sandbox.stats().in_flight)  # answers the victim will never record
        live.pop(0).kill()
        live.append(workers.start("-c", "4", env=slow))
    wait_for(lambda: ids <= {e.idempotency_key for e in sandbox.events(status=200)}, 60)
    wait_for(lambda: redis_client.zcard(KEYS.ledger) == 0, 30)
    for worker in live:
        worker.stop()
    assert sum(floors) > 0, "the kills came after the flow, not in the middle of it"
    counts = sandbox.stats()
    samples = exporter.scrape()

    def sample(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted(labels.items()))]

    # Then each goal is counted delivered exactly once, whoever delivered it
    delivered = sample("goalqueue_goals_total", result="delivered", reason="")
    assert delivered == counts.distinct_keys == len(ids) == 600
    assert sample("goalqueue_delivery_latency_seconds_count") == 600
    # And an answer is counted when its outcome was recorded: the ones a SIGKILL lost were
    # never recorded, and their goals were sent again - each is one of DataFast's duplicates
    answered = sample("goalqueue_datafast_answers_total", status_class="2xx")
    assert delivered <= answered <= counts.by_status[200]
    assert counts.by_status[200] - answered <= counts.duplicates
    assert sample("goalqueue_datafast_request_duration_seconds_count") == answered


def test_settle_counts_each_outcome_once_even_when_a_write_is_repeated(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Given goals in the ledger, and one write that records an outcome for each
    scripts = SweeperScripts(redis_client, KEYS)
    queue = GoalQueue(settings=settings)
    ids = queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(5)])
    entries = {GoalEvent.from_json(e).event_id: e for e in redis_client.zrange(KEYS.ledger, 0, -1)}
    events = [GoalEvent.from_json(entries[event_id]) for event_id in ids]
    settlement = Settlement()
    settlement.delivered(entries[ids[0]], ids[0], "remote", 0.3)
    settlement.answered("2xx", 0.02)
    settlement.bury(entries[ids[1]], DeadLetter.of(events[1], "unknown_visitor"))
    settlement.answered("4xx", 0.2)
    settlement.park(entries[ids[2]], events[2], due=0, outcome="transient")
    settlement.answered("timeout", 12.0)
    settlement.park(entries[ids[3]], events[3], due=0, outcome="deferred:rate_limited")
    settlement.answered("4xx", 0.004)
    settlement.park(entries[ids[4]], events[4], due=0)  # held back for a pause: no outcome

    # When it is written, and written again (a retry after a lost reply)
    assert scripts.settle(settlement, 60_000) == 5
    assert scripts.settle(settlement, 60_000) == 0

    # Then every count moved once
    counters = read(redis_client, KEYS)
    assert {k: v for k, v in counters.outcomes.items() if v} == {
        ("delivered", ""): 1,
        ("dead", "unknown_visitor"): 1,
        ("transient", ""): 1,
        ("deferred", "rate_limited"): 1,
    }
    assert {k: v for k, v in counters.answers.items() if v} == {"2xx": 1, "4xx": 2, "timeout": 1}
    request = dict(counters.request_seconds.buckets)
    assert (request["0.005"], request["0.025"], request["0.25"], request["10"]) == (1, 2, 3, 3)
    assert request["+Inf"] == counters.request_seconds.count == 4
    assert counters.request_seconds.sum == pytest.approx(12.224)
    latency = dict(counters.latency_seconds.buckets)
    assert (latency["0.25"], latency["0.5"], latency["+Inf"]) == (0, 1, 1)
    assert counters.latency_seconds.sum == pytest.approx(0.3)
    assert len(counters.request_seconds.buckets) == len(REQUEST_BOUNDS) + 1
    assert len(counters.latency_seconds.buckets) == len(LATENCY_BOUNDS) + 1


def test_basic_auth_is_required_when_set_and_the_default_bind_is_loopback(
    exporter: Exporter,
) -> None:
    # Given an exporter started without --host, with a login from the environment
    # Then it listens on 127.0.0.1 by default
    assert exporter.announced.startswith(f"goalqueue metrics on {exporter.url} (basic auth")
    assert {p.name: p.default for p in metrics_command.params}["host"] == "127.0.0.1"
    # And a scrape without the login, or with a wrong one, is refused with a challenge
    for auth in (None, (LOGIN[0], "wrong"), ("someone", LOGIN[1])):
        answer = httpx.get(exporter.url, auth=auth, timeout=5)
        assert answer.status_code == 401, auth
        assert answer.headers["www-authenticate"].startswith("Basic realm=")
        assert "goalqueue_" not in answer.text
    garbled = httpx.get(exporter.url, headers={"Authorization": "Basic %%%"}, timeout=5)
    assert garbled.status_code == 401
    # And the right login gets the metrics
    answer = httpx.get(exporter.url, auth=LOGIN, timeout=5)
    assert answer.status_code == 200
    assert "goalqueue_queued_goals 0.0" in answer.text


def test_a_bad_login_setting_stops_the_exporter_with_one_line(settings: Settings) -> None:
    env = {**os.environ, "GOALQUEUE_BROKER_URL": settings.broker_url}
    result = subprocess.run(
        [str(GOALQUEUE), "metrics", "--port", "0", "--basic-auth", "nopassword"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: GOALQUEUE_METRICS_BASIC_AUTH (or --basic-auth) must be user:password, both "
        "non-empty"
    )


@pytest.mark.integration  # runs promtool
def test_the_alerting_rules_are_valid_and_their_tests_pass() -> None:
    promtool = tool("promtool")
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        result = subprocess.run(
            [promtool, *command], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_redis_out_of_reach_is_a_metric_not_a_failed_scrape(
    tmp_path: Path, redis_server: Callable[..., Any]
) -> None:
    # Given an exporter whose Redis goes away
    server = redis_server()
    port = free_port()
    env = {**os.environ, "GOALQUEUE_BROKER_URL": server.url}
    env.pop("GOALQUEUE_METRICS_BASIC_AUTH", None)
    process = subprocess.Popen(
        [str(GOALQUEUE), "metrics", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def answering() -> bool:
            """the exporter answers"""
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answering, 20, 0.1)
        assert "goalqueue_redis_up 1.0" in httpx.get(url, timeout=5).text
        server.stop(signal.SIGKILL)
        # When Prometheus scrapes
        started = time.monotonic()
        answer = httpx.get(url, timeout=30)
        # Then it gets an answer saying so, soon
        assert answer.status_code == 200
        assert "goalqueue_redis_up 0.0" in answer.text
        assert time.monotonic() - started < 10
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_idle_connections_hold_no_thread_and_are_closed_while_scrapes_are_answered(
    settings: Settings,
) -> None:
    # Given an exporter that closes a connection silent for a second
    port = free_port()
    env = {**os.environ, "GOALQUEUE_BROKER_URL": settings.broker_url}
    env.pop("GOALQUEUE_METRICS_BASIC_AUTH", None)
    process = subprocess.Popen(
        [str(GOALQUEUE), "metrics", "--port", str(port), "--timeout", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    clients: list[socket.socket] = []
    try:
        assert process.stdout is not None
        assert "goalqueue metrics on" in process.stdout.readline()
        # When 300 clients connect and send nothing, and one sends half a request line
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        clients[0].sendall(b"GET /metr")
        opened = time.monotonic()
        # Then a scrape is answered meanwhile, and the exporter runs a bounded number of threads
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scrape.status_code == 200 and "goalqueue_redis_up 1.0" in scrape.text
        threads = len(os.listdir(f"/proc/{process.pid}/task"))
        assert threads <= 2 + POOL_THREADS, threads
        # And each silent connection is closed by the exporter within its timeout
        wait_for(lambda: all(closed_by_peer(c) for c in clients), 10)
        assert time.monotonic() - opened < 1 + 2
    finally:
        for client in clients:
            client.close()
        process.terminate()
        process.wait(timeout=10)


def closed_by_peer(client: socket.socket) -> bool:
    """Whether the other end has closed ``client`` (it reads an end of file)."""
    client.settimeout(0)
    try:
        return client.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_the_dashboard_and_the_alerts_use_only_series_the_exporter_serves(
    exporter: Exporter, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given an exporter for a deployment with a goal queued, one waiting, and a shared send
    # rate in force
    queue.track_goal("v", "signup")
    redis_client.zadd(KEYS.waiting, {redis_client.zrange(KEYS.ledger, 0, 0)[0]: time.time()})
    redis_client.hset(KEYS.pace, "rate", 50)
    served = {name for name, _ in exporter.scrape()}
    # And the queries of the Grafana dashboard (valid JSON) and of the alerting rules
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += re.findall(r"expr: (?:>-\n)?([^\n]+(?:\n {10}[^\n]+)*)", ALERTS.read_text())
    # Then every series they name is one the exporter serves
    named = {name for query in queries for name in re.findall(r"goalqueue_[a-z_]+", query)}
    assert len(named) > 10 and named - served == set()
