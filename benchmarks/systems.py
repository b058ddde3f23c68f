"""The things under test: how to enqueue for them and how to start their workers.

* ``goalqueue_process``: one worker process with the defaults,
  ``celery -A workers worker --loglevel=INFO``; Redis DB 12.
* ``goalqueue_node``: one node with the defaults, ``goalqueue worker --loglevel=INFO`` (this
  virtualenv's console script, the Dockerfile's and docker-compose's command): whatever
  processes it starts are the node, and its CPU is theirs together.
* ``plain_threads100``: :mod:`benchmarks.plain_celery` with ``--pool threads -c 100``; Redis
  DB 11. ``plain_prefork`` (Celery's default pool) and ``plain_threads8`` are context rows, run
  only when asked for.
* ``client_limit_process`` / ``client_limit_node``: :class:`ClientLimit`, the worker's HTTP
  client alone (:mod:`benchmarks.client_limit`), in one process and in one process per core.

A *variant* of goalqueue is the worker process with extra arguments, for experiments:
``--variant "-c 64 --loglevel=WARNING"``. ``NAME=VALUE`` tokens (upper-case names) are
environment variables and ``-A module`` replaces the Celery app; ``--processes=2`` runs two
worker processes side by side (still one node).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import redis

from benchmarks.workload import API_KEY, goal_body, goal_fields
from goalqueue import GoalQueue
from goalqueue.config import Settings

REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
GOALQUEUE_DB = 12
PLAIN_DB = 11
GOALQUEUE_URL = f"{REDIS_BASE}/{GOALQUEUE_DB}"
PLAIN_URL = f"{REDIS_BASE}/{PLAIN_DB}"
BULK_BATCH = 1000
GOALQUEUE_SCRIPT = Path(sys.executable).parent / "goalqueue"
"""This virtualenv's ``goalqueue`` console script."""

Kind = Literal["goalqueue", "plain"]


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@cache
def goalqueue_defaults() -> tuple[str, int]:
    """The pool and concurrency the goalqueue app configures (read, not assumed)."""
    from workers.app import create_app

    app = create_app(Settings(broker_url=GOALQUEUE_URL))
    return str(app.conf.worker_pool), int(app.conf.worker_concurrency)


@cache
def plain_task() -> Any:
    """The baseline task, imported with its broker pointed at the plain-Celery database."""
    os.environ["BENCH_BROKER_URL"] = PLAIN_URL
    from benchmarks.plain_celery import deliver_goal

    return deliver_goal


@dataclass(frozen=True)
class System:
    """One worker configuration under test."""

    key: str
    label: str
    kind: Kind
    worker_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()
    app: str = ""
    processes: int = 1
    command: tuple[str, ...] = ()
    """The whole command, instead of ``celery -A app worker`` with ``worker_args``."""
    measures_latency: bool = True

    @property
    def broker_url(self) -> str:
        return GOALQUEUE_URL if self.kind == "goalqueue" else PLAIN_URL

    def argv(self, index: int = 0) -> list[str]:
        """The command of this system's ``index``-th worker process."""
        if self.command:
            return list(self.command)
        app = self.app or ("workers" if self.kind == "goalqueue" else "benchmarks.plain_celery")
        loglevel = ["--loglevel=INFO"] if self.kind == "goalqueue" else []
        # Processes side by side need distinct Celery node names.
        hostname = [f"--hostname=bench-{self.key}-{index}@%h"] if self.processes > 1 else []
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            *loglevel,
            *hostname,
            *self.worker_args,
        ]

    def env(self, api_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOALQUEUE_", "DATAFAST_"))}
        env.update(
            GOALQUEUE_BROKER_URL=GOALQUEUE_URL,
            DATAFAST_API_KEY=API_KEY,
            DATAFAST_API_URL=api_url,
            BENCH_BROKER_URL=PLAIN_URL,
            BENCH_API_URL=api_url,
            BENCH_API_KEY=API_KEY,
        )
        env.update(dict(self.extra_env))
        return env

    def enqueuer(self) -> Enqueuer:
        return Enqueuer(self.kind)


def all_systems() -> list[System]:
    """Every worker system the harness knows, by key (not all run by default)."""
    return [
        System("goalqueue_process", "goalqueue, one worker process (defaults)", "goalqueue"),
        System(
            "goalqueue_node",
            "goalqueue, one node (defaults: goalqueue worker)",
            "goalqueue",
            command=(str(GOALQUEUE_SCRIPT), "worker", "--loglevel=INFO"),
            measures_latency=False,
        ),
        System(
            "plain_threads100",
            "plain Celery, --pool threads -c 100",
            "plain",
            ("--pool", "threads", "-c", "100"),
        ),
        System("plain_prefork", "plain Celery, prefork (default pool, c=cores)", "plain"),
        System(
            "plain_threads8",
            "plain Celery, --pool threads -c 8",
            "plain",
            ("--pool", "threads", "-c", "8"),
        ),
    ]


@dataclass(frozen=True)
class ClientLimit:
    """The worker's HTTP client alone (:mod:`benchmarks.client_limit`): no queue, no Redis."""

    key: str
    label: str
    processes: int
    concurrency: int


def client_limits() -> list[ClientLimit]:
    """In one process, and in one process per core, at the worker's requests in flight."""
    concurrency = Settings().max_in_flight
    cores = os.cpu_count() or 1
    return [
        ClientLimit(
            "client_limit_process",
            f"client limit, 1 process, {concurrency} in flight",
            1,
            concurrency,
        ),
        ClientLimit(
            "client_limit_node",
            f"client limit, {cores} processes (1 per core), {concurrency} in flight each",
            cores,
            concurrency,
        ),
    ]


def variant(spec: str, index: int) -> System:
    """A goalqueue worker with extra arguments (see the module docstring)."""
    tokens = shlex.split(spec)
    env: list[tuple[str, str]] = []
    for token in list(tokens):
        if "=" in token and not token.startswith("-") and token.split("=")[0].isupper():
            name, _, value = token.partition("=")
            env.append((name, value))
            tokens.remove(token)
    app = ""
    if "-A" in tokens:
        at = tokens.index("-A")
        app = tokens[at + 1]
        del tokens[at : at + 2]
    processes = 1
    for token in list(tokens):
        if token.startswith("--processes="):
            processes = int(token.partition("=")[2])
            tokens.remove(token)
    return System(
        f"variant{index}",
        f"goalqueue [{spec}]",
        "goalqueue",
        tuple(tokens),
        tuple(env),
        app,
        processes,
    )


@dataclass
class Enqueuer:
    """Puts goals on the queue the way each system's users would."""

    kind: Kind
    _queue: GoalQueue | None = field(default=None, init=False)

    @property
    def queue(self) -> GoalQueue:
        if self._queue is None:
            self._queue = GoalQueue(broker_url=GOALQUEUE_URL)
        return self._queue

    def one(self) -> str:
        """Enqueue one goal; returns the key the endpoint will see as its Idempotency-Key."""
        if self.kind == "goalqueue":
            return self.queue.track_goal(**goal_fields())
        result = plain_task().apply_async(args=[goal_body()])
        return str(result.id)

    def many(self, n: int) -> list[str]:
        """Enqueue ``n`` goals as fast as each system allows (bulk for goalqueue)."""
        if self.kind == "goalqueue":
            ids: list[str] = []
            for start in range(0, n, BULK_BATCH):
                batch = [goal_fields() for _ in range(min(BULK_BATCH, n - start))]
                ids += self.queue.track_goals(batch)
            return ids
        return [self.one() for _ in range(n)]

    def close(self) -> None:
        if self._queue is not None:
            self._queue.redis.close()


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile by nearest rank (values need not be sorted)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def bounded_poll(timeout: float, interval: float) -> Iterator[float]:
    """Yields the time left, every ``interval`` seconds, until ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        yield left
        time.sleep(interval)
