"""Shared fixtures: a flushed real Redis, quick settings, the sandbox, real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from goalqueue import GoalQueue, keys
from goalqueue.config import Settings
from goalqueue.sandbox import Sandbox

REDIS_URL = os.environ.get("GOALQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
API_KEY = "df_sandbox"


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {condition.__doc__ or condition}")
        time.sleep(interval)


@pytest.fixture
def redis_url() -> str:
    """The test database on the real Redis, flushed before each test."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail(f"these tests need a Redis at {REDIS_URL}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings with sub-second waits, pointed at a closed port until a test sets a URL."""
    return Settings(
        broker_url=redis_url,
        api_key=API_KEY,
        api_url="http://127.0.0.1:9/api/v1/goals",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        http_timeout_seconds=1.0,
        visibility_timeout_seconds=3.0,
        sweep_interval_seconds=0.1,
    )


@pytest.fixture
def queue(settings: Settings) -> GoalQueue:
    return GoalQueue(settings=settings)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


def pop_message(client: redis.Redis) -> tuple[str, int]:
    """Take the next task message off the queue as kombu's BRPOP would; returns its args."""
    raw = client.rpop(keys.QUEUE)
    assert raw is not None, "the queue is empty"
    event_id, seq = json.loads(json.loads(raw)["body"])[0]
    return event_id, seq


@dataclass
class WorkerProcess:
    """A real ``celery -A workers worker`` process."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Workers:
    """Starts worker processes for one test and stops every one of them afterwards."""

    tmp_path: Path
    env: dict[str, str]
    started: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, *args: str, env: dict[str, str] | None = None, ready: bool = True
    ) -> WorkerProcess:
        index = len(self.started)
        log = self.tmp_path / f"worker-{index}.log"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "--loglevel=INFO",
            f"--hostname=test{index}@%h",
            "--without-mingle",
            "--without-gossip",
            *args,
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}
            )
        worker = WorkerProcess(process, log)
        self.started.append(worker)
        if ready:
            wait_for(lambda: "ready." in worker.output() or process.poll() is not None, 60)
            assert process.poll() is None, worker.output()
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(tmp_path: Path, settings: Settings, sandbox: Sandbox) -> Iterator[Workers]:
    """Real worker processes delivering to the sandbox through the test Redis."""
    env = {
        **os.environ,
        "GOALQUEUE_BROKER_URL": settings.broker_url,
        "DATAFAST_API_KEY": API_KEY,
        "DATAFAST_API_URL": sandbox.url,
        "GOALQUEUE_RETRY_BASE_SECONDS": str(settings.retry_base_seconds),
        "GOALQUEUE_RETRY_MAX_SECONDS": str(settings.retry_max_seconds),
        "GOALQUEUE_HTTP_TIMEOUT_SECONDS": str(settings.http_timeout_seconds),
        "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": str(settings.visibility_timeout_seconds),
        "GOALQUEUE_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
    }
    pool = Workers(tmp_path, env)
    yield pool
    pool.stop_all()
