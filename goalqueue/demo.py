"""``goalqueue demo``: the whole pipeline on this machine, end to end, in a few seconds.

It finds a broker, starts the DataFast sandbox and one real worker, enqueues a mix of goals
(valid ones, a bot's, an unknown visitor's; a burst of 429s with ``Retry-After`` and a burst of
503s meet some of the valid ones), shows live progress and ends with a table of what happened to
each kind of goal. It exits 0 only when every valid goal reached the sandbox and both permanent
failures are dead letters, and it stops everything it started, also on Ctrl-C and SIGTERM.

The broker is the first of these that works (``--broker`` picks one):

1. ``env``: the Redis at ``GOALQUEUE_BROKER_URL``, only if it answers and its database is empty;
   the demo deletes its own keys when it ends. A database with anything in it is left alone.
2. ``redis-server``: one from PATH, started on a free port in a temporary directory, with
   nothing kept on disk.
3. ``fakeredis``: fakeredis's Redis-protocol server in a thread (needs ``fakeredis[lua]``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
import redis

from goalqueue import keys
from goalqueue.config import ENV_NAMES, Settings, redact
from goalqueue.deadletters import DeadLetters
from goalqueue.errors import ConfigError, EnqueueError
from goalqueue.producer import GoalQueue
from goalqueue.sandbox import DEFAULT_KEY, Sandbox, SandboxState
from goalqueue.stats import collect

VALID_GOALS = (100, 50, 50)
"""Valid goals per phase: a steady start, then during the 429 burst, then during the 503 burst."""
BURST_429 = 3
BURST_503 = 10
RETRY_AFTER_SECONDS = 1
VISITORS = 20
WORKER_CONCURRENCY = 8
WORKER_SETTINGS = {
    "GOALQUEUE_RETRY_BASE_SECONDS": "0.2",
    "GOALQUEUE_RETRY_MAX_SECONDS": "1",
    "GOALQUEUE_HTTP_TIMEOUT_SECONDS": "2",
    "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": "5",
    "GOALQUEUE_SWEEP_INTERVAL_SECONDS": "0.2",
}
POLL_SECONDS = 0.1
STOP_SECONDS = 10.0
# What a demo run leaves in a Redis database: goalqueue's keys and kombu's bookkeeping.
DEMO_KEY_PATTERNS = (f"{keys.QUEUE}*", "_kombu.*", "unacked*")
CLEAR_LINE = "\x1b[K"


def _visitor(label: str) -> str:
    """A stable visitor id shaped like DataFast's cookie (a UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"goalqueue-demo:{label}"))


BOT = _visitor("bot")
UNKNOWN_VISITOR = _visitor("unknown")
KNOWN_VISITORS = [_visitor(f"visitor-{n}") for n in range(VISITORS)]


class DemoFailed(Exception):
    """The demo cannot go on; the message says why."""


# --------------------------------------------------------------------------- broker


class BrokerUnavailable(Exception):
    """One way of getting a broker does not work here; the message says why."""


@dataclass(frozen=True)
class Broker:
    url: str
    description: str


def _env_broker(stack: ExitStack) -> Broker:
    url = os.environ.get(ENV_NAMES["broker_url"], "").strip()
    if not url:
        raise BrokerUnavailable("GOALQUEUE_BROKER_URL is not set")
    try:
        Settings(broker_url=url)
    except ConfigError as exc:
        raise BrokerUnavailable(str(exc)) from None
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    stack.callback(client.close)
    try:
        size = client.dbsize()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"no Redis answers at {redact(url)} ({exc})") from None
    if size:
        raise BrokerUnavailable(
            f"the database at {redact(url)} holds {size} key(s); the demo only uses an empty one"
        )
    stack.callback(forget_demo_keys, client)
    return Broker(url, f"the Redis at GOALQUEUE_BROKER_URL ({redact(url)}), an empty database")


def forget_demo_keys(client: redis.Redis) -> None:
    """Delete what a demo run leaves in a Redis database that was empty when it began."""
    for pattern in DEMO_KEY_PATTERNS:
        found = list(client.scan_iter(pattern, count=500))
        for start in range(0, len(found), 500):
            client.delete(*found[start : start + 500])


def _redis_server(stack: ExitStack) -> Broker:
    executable = shutil.which("redis-server")
    if executable is None:
        raise BrokerUnavailable("no redis-server on PATH")
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="goalqueue-demo-")))
    port = _free_port()
    log = workdir / "redis.log"
    command = [
        executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack.callback(stop_process, process)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_redis(url, process, log)
    return Broker(url, f"a redis-server started for this demo on 127.0.0.1:{port}, nothing on disk")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_redis(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(POLL_SECONDS)
    finally:
        client.close()
    lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
    raise BrokerUnavailable(f"redis-server did not start: {lines[-1]}")


def _fakeredis(stack: ExitStack) -> Broker:
    if not all(importlib.util.find_spec(name) for name in ("fakeredis", "lupa")):
        raise BrokerUnavailable("fakeredis with Lua is not installed: pip install 'fakeredis[lua]'")
    server = _fake_redis_server(("127.0.0.1", 0))
    thread = threading.Thread(
        target=server.serve_forever, name="goalqueue-demo-fakeredis", daemon=True
    )
    thread.start()
    stack.callback(_stop_fake_redis, server, thread)
    host, port = server.socket.getsockname()[:2]
    version = importlib.metadata.version("fakeredis")
    return Broker(
        f"redis://{host}:{port}/0",
        f"fakeredis {version}, an in-process Redis-protocol server on {host}:{port}",
    )


def _fake_redis_server(address: tuple[str, int]) -> socketserver.TCPServer:
    """fakeredis's ``TcpFakeServer``, with two fixes a real Celery worker needs (fakeredis 2.40).

    * It closes a client's connection right after any error reply. redis-py runs a script with
      EVALSHA and, on NOSCRIPT, loads it with SCRIPT LOAD on the same connection: that fails,
      and tasks die halfway through a delivery. Here an error reply leaves the connection open,
      as Redis does.
    * It writes every reply as its own small TCP segment without TCP_NODELAY, so each reply of
      kombu's pipelines waits ~40 ms for a delayed ACK (Nagle): about 10 goals/s instead of
      hundreds. Here accepted sockets set TCP_NODELAY.
    """
    from fakeredis import TcpFakeServer

    class Server(TcpFakeServer):
        def __init__(self, server_address: tuple[str, int]) -> None:
            super().__init__(server_address)
            self.RequestHandlerClass = _keeping_connections_open(self.RequestHandlerClass)

        def get_request(self) -> tuple[socket.socket, Any]:
            connection, client_address = super().get_request()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return connection, client_address

    return Server(address)


def _keeping_connections_open(handler: Any) -> Any:
    class Handler(handler):
        def setup(self) -> None:
            super().setup()
            client = self.current_client
            client.read_response = _returning_errors(client.read_response)

    return Handler


def _returning_errors(read: Callable[..., Any]) -> Callable[..., Any]:
    """``read`` with an error reply returned, to be sent, instead of raised (which hangs up)."""

    def read_response(**kwargs: Any) -> Any:
        try:
            return read(**kwargs)
        except redis.ResponseError as exc:
            return exc

    return read_response


def _stop_fake_redis(server: socketserver.TCPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=STOP_SECONDS)


BROKERS: dict[str, Callable[[ExitStack], Broker]] = {
    "env": _env_broker,
    "redis-server": _redis_server,
    "fakeredis": _fakeredis,
}


def start_broker(choice: str, stack: ExitStack) -> Broker:
    """The first broker that works, of all (``auto``) or just the one chosen."""
    names = list(BROKERS) if choice == "auto" else [choice]
    reasons = []
    for name in names:
        try:
            return BROKERS[name](stack)
        except BrokerUnavailable as exc:
            click.echo(f"Not using {name}: {exc}")
            reasons.append(f"{name}: {exc}")
    raise DemoFailed("no broker to run on (" + "; ".join(reasons) + ")")


# --------------------------------------------------------------------------- worker


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after a while."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _worker_env(broker_url: str, api_url: str) -> dict[str, str]:
    """This environment without goalqueue's and DataFast's settings, then the demo's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOALQUEUE_", "DATAFAST_"))}
    return {
        **env,
        **WORKER_SETTINGS,
        "GOALQUEUE_BROKER_URL": broker_url,
        "DATAFAST_API_URL": api_url,
        "DATAFAST_API_KEY": DEFAULT_KEY,
    }


def start_worker(
    stack: ExitStack, broker_url: str, api_url: str, log: Path, deadline: float
) -> subprocess.Popen[bytes]:
    """One real ``celery -A workers worker``, once it is ready."""
    command = [
        sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO",
        "--hostname=goalqueue-demo@%h", "--without-mingle", "--without-gossip",
        "-c", str(WORKER_CONCURRENCY),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_worker_env(broker_url, api_url),
            cwd=log.parent,  # celery imports -A from the working directory first
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the worker
        )
    stack.callback(stop_process, process)
    while "ready." not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise DemoFailed(f"the worker exited with status {process.returncode} at start")
        if time.monotonic() > deadline:
            raise DemoFailed("the worker did not get ready in time")
        time.sleep(POLL_SECONDS)
    return process


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Snapshot:
    """Where the goals are, from Redis, and what the sandbox has answered so far."""

    delivered: int
    dead: int
    waiting: int
    queued: int
    in_flight: int
    paused: str | None
    answers: Mapping[int, int]

    @classmethod
    def read(cls, client: redis.Redis, sandbox: Sandbox) -> Snapshot:
        figures = collect(client)
        until = figures["paused_until"]
        return cls(
            delivered=figures["delivered"],
            dead=figures["dead"],
            waiting=figures["scheduled"],
            queued=figures["queued"],
            in_flight=figures["in_flight"],
            paused=figures["pause_reason"] if until and until > time.time() else None,
            answers=sandbox.stats().by_status,
        )

    def settled(self, sent: int) -> bool:
        """Every goal sent is delivered or dead, and nothing is left anywhere."""
        idle = self.queued == self.waiting == self.in_flight == 0
        return idle and self.delivered + self.dead >= sent

    def line(self, sent: int, elapsed: float) -> str:
        answers = " ".join(f"{status}x{n}" for status, n in sorted(self.answers.items()))
        pause = f" | paused ({self.paused})" if self.paused else ""
        return (
            f"{elapsed:5.1f} s  sent {sent}  delivered {self.delivered}  dead {self.dead}  "
            f"waiting {self.waiting}  queued {self.queued}  in flight {self.in_flight}"
            f" | sandbox answered {answers or '-'}{pause}"
        )


class Progress:
    """One status line: redrawn in place on a terminal, printed once a second elsewhere."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._drawn = False
        self._next_line = 0.0

    def show(self, line: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            click.echo(f"\r{line[:width]}{CLEAR_LINE}", nl=False)
            self._drawn = True
        elif time.monotonic() >= self._next_line:
            click.echo(line)
            self._next_line = time.monotonic() + 1

    def note(self, message: str) -> None:
        """A line of its own, above the status line."""
        if self._drawn:
            click.echo(f"\r{CLEAR_LINE}", nl=False)
            self._drawn = False
        click.echo(message)

    def finish(self, line: str) -> None:
        self._next_line = 0.0
        self.show(line)
        if self.tty:
            click.echo()
        self._drawn = False


# --------------------------------------------------------------------------- the run


@dataclass
class Sent:
    """The event ids of every goal the demo enqueued, by kind."""

    valid: list[str] = field(default_factory=list)
    bot: str | None = None
    unknown: str | None = None

    @property
    def count(self) -> int:
        return len(self.valid) + (self.bot is not None) + (self.unknown is not None)


class TimedOut(Exception):
    """The demo's deadline passed while it waited; the message says for what."""


@dataclass
class Run:
    """One demo run: enqueues, watches and waits, redrawing progress as it goes."""

    queue: GoalQueue
    sandbox: Sandbox
    progress: Progress
    started: float
    deadline: float
    sent: Sent = field(default_factory=Sent)

    def snapshot(self) -> Snapshot:
        return Snapshot.read(self.queue.redis, self.sandbox)

    def wait(self, condition: Callable[[Snapshot], bool], what: str) -> None:
        while not condition(snapshot := self.snapshot()):
            if time.monotonic() > self.deadline:
                raise TimedOut(what)
            self.progress.show(snapshot.line(self.sent.count, self.elapsed))
            time.sleep(POLL_SECONDS)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def enqueue_valid(self, count: int) -> None:
        first = len(self.sent.valid)
        goals = [
            {"visitor_id": KNOWN_VISITORS[n % VISITORS], "name": "signup", "metadata": {"n": n}}
            for n in range(first, first + count)
        ]
        self.sent.valid += self.queue.track_goals(goals)

    def play(self) -> None:
        """The scenario; each burst is armed only when the previous one is used up."""
        steady, limited, failing = VALID_GOALS
        self.progress.note(f"Enqueued {steady} valid goals, a bot's goal and an unknown visitor's.")
        self.enqueue_valid(steady)
        self.sent.bot = self.queue.track_goal(BOT, "signup")
        self.sent.unknown = self.queue.track_goal(UNKNOWN_VISITOR, "signup")
        self.wait(lambda s: s.settled(self.sent.count), "the first goals to settle")
        self.sandbox.fail_next(429, count=BURST_429, retry_after=RETRY_AFTER_SECONDS)
        self.progress.note(
            f"Rate limit: the next {BURST_429} requests get 429 with "
            f"Retry-After: {RETRY_AFTER_SECONDS}; enqueued {limited} more valid goals."
        )
        self.enqueue_valid(limited)
        self.wait(lambda s: s.answers.get(429, 0) >= BURST_429, "the 429 burst")
        self.sandbox.fail_next(503, count=BURST_503)
        self.progress.note(
            f"Outage: the next {BURST_503} requests get 503; enqueued {failing} more valid goals."
        )
        self.enqueue_valid(failing)
        self.wait(lambda s: s.settled(self.sent.count), "every goal to be delivered or dead")


# --------------------------------------------------------------------------- the outcome


@dataclass(frozen=True)
class Row:
    kind: str
    sent: int
    delivered: int
    dead: int
    requests: int


def answers_by_goal(sandbox: Sandbox) -> dict[str, list[int]]:
    """Every status the sandbox answered, per goal (its Idempotency-Key is the event id)."""
    answers: dict[str, list[int]] = {}
    for event in sandbox.events():
        if event.idempotency_key is not None:
            answers.setdefault(event.idempotency_key, []).append(event.status)
    return answers


def dead_statuses(client: redis.Redis) -> dict[str, int | None]:
    """The HTTP status of each dead letter, by event id."""
    return {letter.event_id: letter.status_code for letter in DeadLetters(client)}


def table_rows(
    sent: Sent, answers: Mapping[str, Sequence[int]], dead: Mapping[str, int | None]
) -> list[Row]:
    """What happened to each kind of goal; "requests" counts every POST the sandbox received."""
    met = {status: [i for i in sent.valid if status in answers.get(i, ())] for status in (429, 503)}
    kinds = [
        ("valid", sent.valid),
        ("  of which met a 429", met[429]),
        ("  of which met a 503", met[503]),
        ("bot visitor (400)", [sent.bot] if sent.bot else []),
        ("unknown visitor (404)", [sent.unknown] if sent.unknown else []),
    ]
    return [
        Row(
            kind=kind,
            sent=len(ids),
            delivered=sum(200 in answers.get(i, ()) for i in ids),
            dead=sum(i in dead for i in ids),
            requests=sum(len(answers.get(i, ())) for i in ids),
        )
        for kind, ids in kinds
    ]


def problems(
    sent: Sent, answers: Mapping[str, Sequence[int]], dead: Mapping[str, int | None]
) -> list[str]:
    """Why the run failed: valid goals not delivered, permanent failures not dead letters."""
    found = []
    missing = [i for i in sent.valid if 200 not in answers.get(i, ())]
    if missing:
        found.append(f"{len(missing)} of {len(sent.valid)} valid goals were not delivered")
    for event_id, status, who in (
        (sent.bot, 400, "the bot visitor's goal"),
        (sent.unknown, 404, "the unknown visitor's goal"),
    ):
        if event_id is None or dead.get(event_id, 0) != status:
            found.append(f"{who} is not a dead letter with status {status}")
    return found


def render_table(rows: Sequence[Row]) -> list[str]:
    headers = ("kind of goal", "sent", "delivered", "dead-lettered", "requests")
    cells = [headers, *((r.kind, r.sent, r.delivered, r.dead, r.requests) for r in rows)]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]


def report(run: Run, timed_out: str | None) -> list[str]:
    """Print the table and the verdict; returns the problems (none: success)."""
    answers = answers_by_goal(run.sandbox)
    dead = dead_statuses(run.queue.redis)
    run.progress.finish(run.snapshot().line(run.sent.count, run.elapsed))
    click.echo(f"\nWhat happened to each kind of goal, in {run.elapsed:.1f} s:\n")
    for line in render_table(table_rows(run.sent, answers, dead)):
        click.echo(f"  {line}")
    click.echo(f"\n  delivered more than once: {run.sandbox.stats().duplicates}")
    found = problems(run.sent, answers, dead)
    return [f"timed out waiting for {timed_out}", *found] if timed_out else found


# --------------------------------------------------------------------------- the command


def _sandbox_state(unknown_visitors: bool) -> SandboxState:
    """Only registered visitors have pageviews; ``unknown_visitors`` registers none."""
    visitors = set() if unknown_visitors else set(KNOWN_VISITORS)
    return SandboxState(visitor_mode="registered", visitors=visitors, bots={BOT})


def run_demo(choice: str, timeout: float, unknown_visitors: bool, log: Path) -> list[str]:
    """Set everything up, play the scenario, report; returns the problems found."""
    started = time.monotonic()
    deadline = started + timeout
    with ExitStack() as stack:
        broker = start_broker(choice, stack)
        click.echo(f"Broker: {broker.description}.")
        sandbox = stack.enter_context(Sandbox(_sandbox_state(unknown_visitors)))
        click.echo(f"DataFast sandbox: {sandbox.url}")
        worker = start_worker(stack, broker.url, sandbox.url, log, deadline)
        ready = time.monotonic() - started
        click.echo(
            f"Worker: pid {worker.pid}, {WORKER_CONCURRENCY} threads, ready at {ready:.1f} s."
        )
        queue = GoalQueue(settings=Settings(broker_url=broker.url))
        stack.callback(queue.redis.close)
        run = Run(queue, sandbox, Progress(sys.stdout.isatty()), started, deadline)
        try:
            run.play()
        except TimedOut as exc:
            return report(run, str(exc))
        return report(run, None)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so everything started is stopped."""

    def interrupt(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("demo")
@click.option(
    "--broker",
    "choice",
    type=click.Choice(["auto", *BROKERS]),
    default="auto",
    show_default=True,
    help="Where Redis comes from; auto tries env, then redis-server, then fakeredis.",
)
@click.option(
    "--timeout",
    default=90.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Give up after this many seconds.",
)
@click.option(
    "--unknown-visitors",
    is_flag=True,
    hidden=True,
    help="The sandbox knows no visitor, so every goal is refused (404): a run that fails.",
)
def demo_command(choice: str, timeout: float, unknown_visitors: bool) -> None:
    """Run the whole pipeline here: a broker, the DataFast sandbox, a real worker, goals."""
    workdir = Path(tempfile.mkdtemp(prefix="goalqueue-demo-"))
    log = workdir / "worker.log"
    try:
        with _sigterm_as_interrupt():
            found = run_demo(choice, timeout, unknown_visitors, log)
    except KeyboardInterrupt:
        shutil.rmtree(workdir)
        click.echo("\nInterrupted: everything the demo started is stopped.", err=True)
        sys.exit(130)
    except (DemoFailed, EnqueueError, redis.RedisError) as exc:
        found = [str(exc)]
    if not found:
        shutil.rmtree(workdir)
        click.echo("OK: every valid goal was delivered; both permanent failures are dead letters.")
        return
    click.echo(f"FAILED: {'; '.join(found)}.", err=True)
    if log.exists():
        click.echo(f"Worker log: {log}", err=True)
    else:
        shutil.rmtree(workdir)
    sys.exit(1)
