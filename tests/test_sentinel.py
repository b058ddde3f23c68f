"""Redis Sentinel: goalqueue follows a failover, and WAIT keeps acknowledged goals.

Each scenario starts its own deployment on loopback ports: one primary, one replica and three
sentinels (``redis-server CONF --sentinel``, failover after half a second of silence), two real
``celery -A workers worker`` processes and a producer enqueuing as fast as it can. The test
SIGKILLs the primary while goals flow. Once the sentinels have promoted the replica, the dead
primary is started again, empty, as a replica of the new primary (a primary without persistence
must never come back as a primary before the failover: the replica would copy its empty data).
With one replica and ``GOALQUEUE_MIN_REPLICAS=1`` no goal can be acknowledged until then: run two
replicas in production.

With ``GOALQUEUE_MIN_REPLICAS=1`` every goal ``track_goal`` acknowledged must be delivered, at
most twice. With ``GOALQUEUE_MIN_REPLICAS=0`` the test reports how many acknowledged goals were
lost (it may be none: replication on loopback is quick). Both print the recovery times:

    pytest tests/test_sentinel.py -k failover -s
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from asyncio import StreamReader, StreamWriter
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import redis
import redis.sentinel

from goalqueue import GoalQueue, connections
from goalqueue.config import Settings
from goalqueue.deadline import connect
from goalqueue.errors import ConfigError, EnqueueError
from goalqueue.keys import Keys
from goalqueue.sandbox import Sandbox
from goalqueue.sentinel import SentinelURL
from goalqueue.urls import redact
from tests.helpers.markers import mark
from tests.helpers.messages import pop_message
from tests.helpers.ports import free_port
from tests.helpers.redis_server import RedisServer
from tests.helpers.scheduling import TIMED
from tests.helpers.settings import quick_settings
from tests.helpers.spool import spooled_rows
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers, worker_env
from workers.app import create_app
from workers.scripts import Bound, Standing, TakeReply, WorkerScripts
from workers.transport import SentinelTransport, harden

MASTER = "goalqueue-test"
# One-way delay of the replication link (the primary's writes reach the replica this late).
LINK_DELAY = 0.002
# No persistence, and a full sync that starts at once (Redis waits 5 s for more replicas by
# default: a replica that rejoins confirms nothing until its sync is done).
NO_PERSISTENCE = ("--appendonly", "no", "--repl-diskless-sync-delay", "0")
# Workers deliver at most this many goals a second, so that a producer running faster leaves a
# backlog: goals acknowledged just before the kill still wait in the queue, where a failover
# can lose them.
DELIVERY_RATE = 1000
KEYS = Keys()
# Goals a failover may send twice: those whose delivery DataFast had accepted but whose record
# had not reached the replica when the primary died (the engine records up to eight writes at
# once, each for up to a few hundred goals in flight).
DUPLICATE_BOUND = 600


# ------------------------------------------------------------------------ settings, clients

ISSUE_FORM = "sentinel://host:26379;sentinel://host2:26379/0"


def sentinel_settings(url: str = ISSUE_FORM, **env: str) -> Settings:
    return Settings.from_env(
        {"GOALQUEUE_BROKER_URL": url, "GOALQUEUE_SENTINEL_MASTER": "mymaster", **env}
    )


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_kombus_sentinel_form_names_the_sentinels_and_the_database() -> None:
    settings = sentinel_settings()
    assert settings.sentinel == SentinelURL(sentinels=(("host", 26379), ("host2", 26379)), db=0)
    assert settings.sentinel_master == "mymaster"
    # a port may be left out, and the database named on the first URL only
    parsed = SentinelURL.parse("sentinel://a/3;sentinel://b:26380")
    assert parsed.sentinels == (("a", 26379), ("b", 26380)) and parsed.db == 3


def test_passwords_and_tls_are_read_as_kombu_reads_them() -> None:
    # Given the master's credentials and TLS options on the first URL, the sentinels' password
    # in its own variable
    settings = sentinel_settings(
        "sentinel://app:p%40ss@h1:26379/2?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem"
        ";sentinel://h2:26379",
        GOALQUEUE_SENTINEL_PASSWORD="sentinel-secret",
    )
    # Then the master's connections get them, TLS on, and the sentinels get theirs
    assert settings.sentinel is not None
    assert settings.sentinel.connection_kwargs() == {
        "db": 2,
        "username": "app",
        "password": "p@ss",
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/ca.pem",
    }
    assert connections.sentinel_options(settings) == {
        "password": "sentinel-secret",
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/ca.pem",
    }
    # And no password shows in the settings' repr or in a redacted URL
    assert "p%40ss" not in repr(settings) and "sentinel-secret" not in repr(settings)
    assert (
        redact("sentinel://:a@h1;sentinel://:b@h2/0") == "sentinel://:***@h1;sentinel://:***@h2/0"
    )


M = {"GOALQUEUE_SENTINEL_MASTER": "m"}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"GOALQUEUE_BROKER_URL": ISSUE_FORM}, "GOALQUEUE_SENTINEL_MASTER"),
        (M, "GOALQUEUE_SENTINEL_MASTER"),
        ({"GOALQUEUE_SENTINEL_PASSWORD": "pw"}, "GOALQUEUE_SENTINEL_PASSWORD"),
        ({**M, "GOALQUEUE_BROKER_URL": "sentinel://h1/0;sentinel://h2/1"}, "same database"),
        ({**M, "GOALQUEUE_BROKER_URL": "sentinel://h1;sentinel://:pw@h2"}, "first sentinel"),
        ({**M, "GOALQUEUE_BROKER_URL": "sentinel://h1;redis://h2"}, "sentinel://host:26379"),
        ({**M, "GOALQUEUE_BROKER_URL": "sentinel://:pw@h1:x"}, "bad sentinel URL"),
        ({**M, "GOALQUEUE_BROKER_URL": "sentinel://h1/db"}, "database must be a number"),
        ({**M, "GOALQUEUE_BROKER_URL": "sentinel://h1?ssl=1"}, "unknown sentinel URL option"),
        ({**M, "GOALQUEUE_BROKER_URL": "sentinel://h1?ssl_cert_reqs=x"}, "ssl_cert_reqs"),
        ({"GOALQUEUE_MIN_REPLICAS": "one"}, "GOALQUEUE_MIN_REPLICAS"),
        ({"GOALQUEUE_MIN_REPLICAS": "-1"}, "GOALQUEUE_MIN_REPLICAS"),
    ],
)
def test_a_bad_sentinel_setting_is_one_line_naming_it(env: dict[str, str], names: str) -> None:
    message = config_error(env)
    assert names in message
    assert ":pw@" not in message


def test_wait_defaults_to_one_replica_behind_sentinel_and_none_otherwise() -> None:
    assert sentinel_settings().replicas_to_wait_for == 1
    assert Settings.from_env({}).replicas_to_wait_for == 0
    assert sentinel_settings(GOALQUEUE_MIN_REPLICAS="0").replicas_to_wait_for == 0
    plain = Settings.from_env({"GOALQUEUE_MIN_REPLICAS": "2"})
    assert plain.replicas_to_wait_for == 2


def test_celery_gets_the_master_name_and_the_hardened_sentinel_transport() -> None:
    settings = sentinel_settings(GOALQUEUE_SENTINEL_PASSWORD="pw")
    app = create_app(settings)
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"] == {"password": "pw"}
    connection = harden(app.connection_for_read())
    assert connection.get_transport_cls() is SentinelTransport
    # kombu reads the sentinels from the URL's parts, the database from the first
    assert [url.split("//")[1] for url in connection.alt] == ["host:26379", "host2:26379/0"]


def test_every_client_asks_the_sentinels_for_the_master() -> None:
    settings = sentinel_settings()
    for client in (connections.client(settings), connect(settings)):
        pool = client.connection_pool
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
        assert pool.service_name == "mymaster" and pool.is_master
        assert issubclass(pool.connection_class, redis.sentinel.SentinelManagedConnection)
    # the producer's connections keep the enqueue deadline
    assert connect(settings).connection_pool.connection_class.__name__ == (
        "DeadlineSentinelManagedConnection"
    )


@pytest.mark.integration
def test_sentinels_that_do_not_answer_cost_one_enqueue_timeout() -> None:
    # Given three sentinels that accept connections and never answer
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    url = ";".join(f"sentinel://127.0.0.1:{sock.getsockname()[1]}" for sock in silent)
    queue = GoalQueue(settings=sentinel_settings(url, GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS="0.3"))
    # When a goal is tracked
    started = time.monotonic()
    with pytest.raises(EnqueueError):
        queue.track_goal("v", "signup")
    # Then asking all of them took one enqueue timeout, not one each
    assert time.monotonic() - started < 0.3 + 0.2
    queue.close()
    for sock in silent:
        sock.close()


def test_an_enqueue_the_replicas_do_not_confirm_in_time_is_refused(settings: Settings) -> None:
    # Given a Redis without replicas and a producer that waits for one
    queue = GoalQueue(settings=replace(settings, min_replicas=1, enqueue_timeout_seconds=0.5))
    # When a goal is tracked
    started = time.monotonic()
    with pytest.raises(EnqueueError, match="not 1 replica"):
        queue.track_goal("v", "signup")
    # Then it fails within the enqueue timeout, with the replicas' answer
    assert time.monotonic() - started < 0.5 + 0.1
    queue.close()


def test_an_unconfirmed_goal_goes_to_the_spool(settings: Settings, tmp_path: Path) -> None:
    spooling = replace(
        settings, min_replicas=1, enqueue_timeout_seconds=0.2, spool_dir=str(tmp_path)
    )
    queue = GoalQueue(settings=spooling)
    event_id = queue.track_goal("v", "signup")
    assert [row[0] for row in spooled_rows(tmp_path)] == [event_id]
    queue.close()


def test_wait_runs_in_the_enqueue_round_trip_and_survives_an_empty_script_cache(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Given a primary with one replica, whose script cache is empty (as after a failover)
    primary = redis_server(*NO_PERSISTENCE)
    replica = redis_server(*NO_PERSISTENCE, "--replicaof", "127.0.0.1", str(primary.port))
    wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", 10)
    settings = replace(quick_settings(primary.url), min_replicas=1)
    queue = GoalQueue(settings=settings)
    primary.client().script_flush()
    # When goals are enqueued, one and more than a chunk at a time
    one = queue.track_goal("v", "signup")
    many = queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(1200)])
    # Then the replica already holds every one of them
    ledger = replica.client().zrange(KEYS.ledger, 0, -1)
    assert {json.loads(entry)["i"] for entry in ledger} == {one, *many}
    queue.close()


def test_passwords_reach_the_master_and_the_sentinels(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    # Given a primary and a replica that want a password, and a sentinel that wants its own
    primary = redis_server(*NO_PERSISTENCE)
    replica = redis_server(*NO_PERSISTENCE, "--replicaof", "127.0.0.1", str(primary.port))
    replica.client().config_set("masterauth", "master-pw")
    for server in (replica, primary):
        server.client().config_set("requirepass", "master-pw")
    sentinel = Sentinel(
        tmp_path / "sentinel",
        primary.port,
        quorum=1,
        extra=f"requirepass sentinel-pw\nsentinel auth-pass {MASTER} master-pw\n",
    ).start()
    try:
        watcher = redis.Redis(port=sentinel.port, password="sentinel-pw", decode_responses=True)
        wait_for(lambda: len(watcher.sentinel_slaves(MASTER)) == 1, 20)
        url = f"sentinel://:master-pw@127.0.0.1:{sentinel.port}/0"
        env = {"GOALQUEUE_SENTINEL_PASSWORD": "sentinel-pw"}
        settings = replace(sentinel_settings(url, **env), sentinel_master=MASTER)
        # When the producer enqueues (waiting for the replica) and a worker's clients connect
        queue = GoalQueue(settings=settings)
        event_id = queue.track_goal("v", "signup")
        queue.close()
        with create_app(settings).connection_for_write() as broker:
            broker_answers = broker.default_channel.client.ping()
        # Then each found the master with the right passwords, and the replica has the goal
        assert connections.client(settings).zcard(KEYS.ledger) == 1
        assert broker_answers
        on_replica = redis.Redis(port=replica.port, password="master-pw", decode_responses=True)
        ledger = on_replica.zrange(KEYS.ledger, 0, -1)
        assert [json.loads(entry)["i"] for entry in ledger] == [event_id]
        # And a wrong sentinel password is an EnqueueError, not a hang
        wrong = replace(settings, sentinel_password="nope")
        with pytest.raises(EnqueueError):
            GoalQueue(settings=wrong).track_goal("v", "signup")
    finally:
        sentinel.stop()


def test_a_copy_whose_sequence_now_names_another_goal_leaves_that_goal_alone(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Given a worker holding goal A's message (sequence 1) from a primary that then died before
    # A reached the replica, and A delivered since (re-sent from the spool)
    queue = GoalQueue(settings=settings)
    first = queue.track_goal("v", "signup")
    held, seq = pop_message(redis_client)
    redis_client.flushdb()  # the promoted replica never saw A
    mark(redis_client, first, "remote-id")
    # And goal B, which the new primary took under the same sequence
    second = queue.track_goal("w", "signup")
    assert pop_message(redis_client)[1] == seq
    queue.close()
    # When the worker takes A's copy
    take = asyncio.run(take_alone(settings, held, seq))
    # Then it is a stale copy: B's entry is not A's to settle (as 'done' it would be dropped)
    (copy,) = take.copies
    assert (copy.standing, copy.entry) == (Standing.GONE, "")
    (entry,) = redis_client.zrange(KEYS.ledger, 0, -1)
    assert json.loads(entry)["i"] == second


async def take_alone(settings: Settings, event_id: str, seq: int) -> TakeReply:
    client = connections.async_client(settings)
    try:
        scripts = WorkerScripts(client, settings.keys, Bound.of(settings))
        return await scripts.take(time.time(), goal=(event_id, seq), claim=0, patient=False)
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------ failover


@dataclass
class Sentinel:
    """A ``redis-server --sentinel`` watching ``primary``, on a free port."""

    directory: Path
    primary: int
    quorum: int = 2
    extra: str = ""  # more configuration lines
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        self.directory.mkdir(parents=True)
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} {self.quorum}\n"
            f"sentinel down-after-milliseconds {MASTER} 500\n"
            f"sentinel failover-timeout {MASTER} 3000\n{self.extra}"
        )
        with (self.directory / "sentinel.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class LaggingLink:
    """A TCP proxy for the replication link: what the primary sends reaches the replica
    ``delay`` seconds later, like a link to another zone. When the primary's side closes, what
    is still on its way is dropped, as when the primary's host dies with it: the window in
    which a goal the primary acknowledged has not reached the replica."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> LaggingLink:
        self._thread.start()
        serve = asyncio.start_server(self._link, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(serve, self.loop).result(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _link(self, replica_in: StreamReader, replica_out: StreamWriter) -> None:
        try:
            primary_in, primary_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the primary is gone: so is the link
            replica_out.close()
            return
        on_the_way: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def upstream() -> None:  # the replica's acks, at once
            while data := await replica_in.read(65536):
                primary_out.write(data)
            primary_out.close()

        async def downstream() -> None:  # the replication stream, late
            while data := await primary_in.read(65536):
                on_the_way.put_nowait((self.loop.time() + self.delay, data))
            replica_out.close()  # the primary is gone: what is on its way is lost

        async def arrive() -> None:
            while not replica_out.is_closing():
                due, data = await on_the_way.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not replica_out.is_closing():
                    replica_out.write(data)

        tasks = [asyncio.create_task(job()) for job in (upstream, downstream, arrive)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        replica_out.close()
        primary_out.close()


@dataclass
class Deployment:
    """One primary, one replica (through a lagging link), three sentinels."""

    primary: RedisServer
    replica: RedisServer
    link: LaggingLink
    sentinels: list[Sentinel]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels) + "/0"

    def rejoin(self) -> None:
        """Start the killed primary again, empty, as a replica of the promoted one (as a
        supervisor that knows the new primary does; left to the sentinels, turning a returning
        primary into a replica takes them about ten seconds)."""
        self.primary.extra = ("--replicaof", "127.0.0.1", str(self.replica.port))
        self.primary.start()

    def master_port(self) -> int | None:
        """The primary's port as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            try:
                _, port = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def settled(self) -> bool:
        """every sentinel sees the replica and the two other sentinels"""
        try:
            return all(
                len(s.client().sentinel_slaves(MASTER)) == 1
                and len(s.client().sentinel_sentinels(MASTER)) == 2
                for s in self.sentinels
            )
        except redis.RedisError:
            return False


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    primary = RedisServer(tmp_path / "primary", options=NO_PERSISTENCE).start()
    link = LaggingLink(primary.port, LINK_DELAY).start()
    replica = RedisServer(
        tmp_path / "replica",
        ("--replicaof", "127.0.0.1", str(link.port)),
        options=NO_PERSISTENCE,
    ).start()
    sentinels: list[Sentinel] = []
    try:
        wait_for(lambda: replica.client().info("replication")["master_link_status"] == "up", 10)
        sentinels += [Sentinel(tmp_path / f"sentinel-{i}", primary.port).start() for i in range(3)]
        running = Deployment(primary, replica, link, sentinels)
        wait_for(running.settled, 20)
        yield running
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        for server in (primary, replica):
            server.stop(signal.SIGKILL)
        link.stop()


class Producer:
    """A web app whose ``threads`` request threads call ``track_goal`` as fast as Redis takes
    goals, until stopped."""

    def __init__(self, queue: GoalQueue, threads: int) -> None:
        self.queue = queue
        self.acked: dict[str, tuple[float, float]] = {}  # event id -> track_goal began, ended
        self.failures = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.done.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(10)

    def _run(self, thread: int) -> None:
        index = 0
        while not self.done.is_set():
            index += 1
            began = time.time()
            try:
                event_id = self.queue.track_goal(f"v{thread}-{index}", "signup")
            except EnqueueError:
                with self._lock:
                    self.failures += 1
                time.sleep(0.01)  # the app's pace while Redis refuses, not a wait for a condition
                continue
            with self._lock:
                self.acked[event_id] = (began, time.time())

    def acked_since(self, moment: float) -> list[str]:
        """Goals whose track_goal began after ``moment`` and returned their id."""
        with self._lock:
            return [event_id for event_id, (began, _) in self.acked.items() if began > moment]


@dataclass
class Outcome:
    acked: int
    lost: int
    duplicates: int
    most_copies: int
    failures: int
    kill_to_failover: float
    kill_to_rejoin: float
    kill_to_enqueue: float
    kill_to_resumed: float
    kill_to_delivery: float


def run_failover(
    deployment: Deployment, sandbox: Sandbox, tmp_path: Path, min_replicas: int
) -> Outcome:
    settings = replace(
        quick_settings("redis://127.0.0.1:9/0"),
        broker_url=deployment.url,
        sentinel_master=MASTER,
        min_replicas=min_replicas,
        enqueue_timeout_seconds=1.0,
    )
    env = {
        **worker_env(settings, sandbox.url),
        "GOALQUEUE_SENTINEL_MASTER": MASTER,
        "GOALQUEUE_MIN_REPLICAS": str(min_replicas),
        "GOALQUEUE_MAX_RATE": str(DELIVERY_RATE),
    }
    workers = Workers(tmp_path, env)
    queue = GoalQueue(settings=settings)
    producer = Producer(queue, threads=4)
    try:
        # Given two workers delivering what a producer enqueues as fast as it can
        started = [workers.start("-c", "4", ready=False) for _ in range(2)]
        wait_for(lambda: all("ready." in worker.output() for worker in started), 60)
        producer.start()
        wait_for(lambda: len(sandbox.events(status=200)) >= 1000, 20)
        # When the primary is SIGKILLed mid-flow
        deployment.primary.stop(signal.SIGKILL)
        killed_at = time.time()
        # Then the sentinels promote the replica, and the old primary rejoins as a replica
        wait_for(lambda: deployment.master_port() == deployment.replica.port, 20)
        promoted_at = time.time()
        deployment.rejoin()
        new_primary = deployment.replica.client()
        wait_for(lambda: new_primary.info("replication")["connected_slaves"] == 1, 20)
        rejoined = time.time() - killed_at
        wait_for(lambda: delivered_after(sandbox, promoted_at), 30)
        resumed = delivered_after(sandbox, promoted_at)[0] - killed_at
        # And producers and workers follow without a restart
        wait_for(lambda: producer.acked_since(killed_at), 20)
        first_enqueue = min(producer.acked[i][1] for i in producer.acked_since(killed_at))
        after = set(producer.acked_since(killed_at))
        wait_for(lambda: after & delivered_ids(sandbox), 30)
        first_delivery = min(
            event.time for event in sandbox.events(status=200) if event.idempotency_key in after
        )
        wait_for(lambda: len(producer.acked_since(first_enqueue)) >= 200, 20)
        producer.stop()
        wait_for(lambda: drained(new_primary), 30)
        assert all(worker.process.poll() is None for worker in started), "a worker died"
    finally:
        producer.stop()
        queue.close()
        workers.stop_all()
    copies = Counter(event.idempotency_key for event in sandbox.events(status=200))
    acked = set(producer.acked)
    return Outcome(
        acked=len(acked),
        lost=len(acked - set(copies)),
        duplicates=sum(n - 1 for n in copies.values()),
        most_copies=max(copies.values()),
        failures=producer.failures,
        kill_to_failover=promoted_at - killed_at,
        kill_to_resumed=resumed,
        kill_to_rejoin=rejoined,
        kill_to_enqueue=first_enqueue - killed_at,
        kill_to_delivery=first_delivery - killed_at,
    )


def delivered_after(sandbox: Sandbox, moment: float) -> list[float]:
    """When the sandbox accepted goals after ``moment``, earliest first."""
    return sorted(event.time for event in sandbox.events(status=200) if event.time > moment)


def delivered_ids(sandbox: Sandbox) -> set[str | None]:
    return {event.idempotency_key for event in sandbox.events(status=200)}


def drained(client: redis.Redis) -> bool:
    """nothing left in the new primary's queue, ledger or waiting set"""
    with client.pipeline() as pipe:
        pipe.llen(KEYS.queue).zcard(KEYS.ledger).zcard(KEYS.waiting)
        return not any(pipe.execute())


def report(name: str, outcome: Outcome) -> None:
    print(
        f"\n{name}: {outcome.acked} goals acknowledged, {outcome.lost} lost, "
        f"{outcome.duplicates} duplicate deliveries "
        f"(at most {outcome.most_copies} copies of one), "
        f"{outcome.failures} enqueues refused; from the kill: "
        f"failover {outcome.kill_to_failover:.2f} s, "
        f"old primary back as a replica {outcome.kill_to_rejoin:.2f} s, "
        f"deliveries resumed {outcome.kill_to_resumed:.2f} s, "
        f"first acknowledged enqueue {outcome.kill_to_enqueue:.2f} s, first delivery of a goal "
        f"enqueued after the kill {outcome.kill_to_delivery:.2f} s"
    )


@TIMED
def test_with_wait_every_acknowledged_goal_survives_a_failover(
    deployment: Deployment, sandbox: Sandbox, tmp_path: Path
) -> None:
    outcome = run_failover(deployment, sandbox, tmp_path, min_replicas=1)
    report("GOALQUEUE_MIN_REPLICAS=1", outcome)
    assert outcome.lost == 0
    assert outcome.most_copies <= 2
    assert outcome.duplicates <= DUPLICATE_BOUND


@TIMED
def test_without_wait_a_failover_may_lose_acknowledged_goals(
    deployment: Deployment, sandbox: Sandbox, tmp_path: Path
) -> None:
    outcome = run_failover(deployment, sandbox, tmp_path, min_replicas=0)
    report("GOALQUEUE_MIN_REPLICAS=0", outcome)
    assert outcome.most_copies <= 2
