"""Monitoring: real Flower (the PyPI package) watching a real worker through the real Redis."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.keys import TASK_NAME
from goalqueue.sandbox import Sandbox
from tests.helpers.databases import FLOWER_REDIS_URL, flush
from tests.helpers.settings import API_KEY, KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers

AUTH = ("monitor", "flower-test-password")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The quick test settings, on a database of Flower's own, flushed first."""
    flush(FLOWER_REDIS_URL)
    return replace(settings, broker_url=FLOWER_REDIS_URL)


@dataclass
class Flower:
    """A running ``celery -A workers flower`` and a way to call its REST API."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, auth: tuple[str, str] | None = AUTH) -> httpx.Response:
        return httpx.get(self.url + path, auth=auth, timeout=10)

    def api(self, path: str) -> Any:
        response = self.get(path)
        response.raise_for_status()
        return response.json()


@pytest.fixture
def flower(settings: Settings, tmp_path: Path) -> Iterator[Flower]:
    """Flower on a free port with basic auth, watching the test broker."""
    log = tmp_path / "flower.log"
    command = [
        sys.executable, "-m", "celery", "-A", "workers", "flower",
        "--address=127.0.0.1", "--port=0", f"--basic-auth={AUTH[0]}:{AUTH[1]}",
    ]  # fmt: skip
    env = {**os.environ, "GOALQUEUE_BROKER_URL": settings.broker_url}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Flower(process, log)
    try:
        wait_for(lambda: "Visit me at" in running.output() or process.poll() is not None, 20)
        assert process.poll() is None, running.output()
        port = re.search(r"Visit me at http://127\.0\.0\.1:(\d+)", running.output())
        assert port is not None, running.output()
        running.url = f"http://127.0.0.1:{port[1]}"
        yield running
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_flower_shows_the_worker_and_each_delivered_goal_without_secrets(
    flower: Flower, queue: GoalQueue, sandbox: Sandbox, workers: Workers
) -> None:
    # Given Flower watching the broker, and a worker delivering to the sandbox
    workers.start("-c", "2")
    name = f"test0@{socket.gethostname()}"

    def worker_alive() -> bool:
        """Flower has heard the worker's events (online or heartbeat)"""
        return bool(flower.api("/api/workers?status=1").get(name))

    wait_for(worker_alive, 20)
    # When the app tracks goals with personal data in them
    ids = [
        queue.track_goal("visitor-4f1c", "signup", metadata={"email": "ada@example.com"})
        for _ in range(3)
    ]

    def delivered_in_flower() -> bool:
        """Flower lists every goal as a goalqueue.deliver task in state SUCCESS"""
        tasks = flower.api("/api/tasks")
        return all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids)

    wait_for(delivered_in_flower, 20)

    def inspected() -> bool:
        """Flower's inspection of the worker (stats, queues, registered tasks) succeeded"""
        info = flower.api("/api/workers?refresh=1").get(name, {})
        return {"stats", "active_queues", "registered"} <= set(info)

    # Then Flower knows the worker, the queue it reads and the task it runs
    wait_for(inspected, 15)
    info = flower.api("/api/workers")[name]
    assert [q["name"] for q in info["active_queues"]] == [KEYS.queue]
    assert TASK_NAME in info["registered"]
    # And shows each goal as a clearly named task, under its event id, with its outcome
    tasks = flower.api("/api/tasks")
    for event_id in ids:
        task = tasks[event_id]
        assert (task["name"], task["worker"], task["result"]) == (
            TASK_NAME,
            name,
            "'delivered'",
        )
    # And neither the API key nor the goal's personal data reaches Flower
    text = json.dumps(tasks)
    for secret in (API_KEY, "visitor-4f1c", "ada@example.com"):
        assert secret not in text


def test_flower_refuses_the_api_without_basic_auth(flower: Flower) -> None:
    assert flower.get("/api/workers", auth=None).status_code == 401
    assert flower.get("/api/tasks", auth=(AUTH[0], "wrong")).status_code == 401
    assert flower.get("/api/tasks").status_code == 200


def test_flower_shows_goals_a_task_claimed_as_tasks_of_their_own(
    flower: Flower, queue: GoalQueue, sandbox: Sandbox, workers: Workers
) -> None:
    # Given a backlog, then a worker whose tasks claim more goals off the queue
    ids = queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(30)])
    worker = workers.start("-c", "1")
    name = f"test0@{socket.gethostname()}"

    def delivered_in_flower() -> bool:
        """Flower lists every goal, claimed or not, as a goalqueue.deliver task in SUCCESS"""
        tasks = flower.api("/api/tasks")
        return all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids)

    # Then every goal shows up under its event id, named and placed like any other task
    wait_for(delivered_in_flower, 30)
    tasks = flower.api("/api/tasks")
    assert {(tasks[i]["name"], tasks[i]["worker"]) for i in ids} == {(TASK_NAME, name)}
    assert {tasks[i]["result"] for i in ids} == {"'delivered'"}
    received = worker.output().count(f"Task {TASK_NAME}[") // 2
    assert received < len(ids), "no task claimed a goal"
