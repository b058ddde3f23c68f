"""Real web servers (gunicorn, uvicorn) serving the apps of :mod:`tests.webapps`, and a client
that keeps a few signups in flight and times each one."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.ports import free_port
from tests.helpers.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"

DJANGO, FLASK, FASTAPI = (
    "tests.webapps.django_site:application",
    "tests.webapps.flask_site:app",
    "tests.webapps.fastapi_site:app",
)
SERVERS: dict[str, list[str]] = {
    # gunicorn: a sync, a preloaded sync and a gevent server, each of two worker processes;
    # eventlet's own server (monkey-patched); uvicorn
    "django-sync": ["gunicorn", "-k", "sync", "-w", "2", DJANGO],
    "django-gevent": ["gunicorn", "-k", "gevent", "-w", "2", DJANGO],
    "flask-preload": ["gunicorn", "-k", "sync", "-w", "2", "--preload", FLASK],
    "flask-eventlet": ["tests.webapps.eventlet_serve"],
    "fastapi-uvicorn": ["uvicorn", "--workers", "1", FASTAPI],
}


@dataclass
class WebServer:
    """One of :data:`SERVERS`, started on a free port with ``env``; its output in ``log``."""

    kind: str
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WebServer:
        command = [sys.executable, "-m", *SERVERS[self.kind], *self._bind()]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=log
            )
        wait_for(self._answers, 30)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def _bind(self) -> list[str]:
        if self.kind.endswith("eventlet"):
            return [str(self.port)]
        if self.kind.startswith("fastapi"):
            return ["--host", "127.0.0.1", "--port", str(self.port)]
        return ["--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "5"]

    def _answers(self) -> bool:
        """the server answers a signup"""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.kind} exited:\n{self.output()[-3000:]}")
        try:
            signup(self.port, timeout=2)
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Answer:
    """One signup: its status, the goal's event id and how long the request took."""

    status: int
    goal: str | None
    seconds: float


def signup(port: int, timeout: float = 10.0) -> Answer:
    """``POST /signup`` as a visitor with DataFast's cookie."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            "POST",
            "/signup",
            body=b"",
            headers={"Cookie": f"datafast_visitor_id={VISITOR}", "Content-Length": "0"},
        )
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    goal = json.loads(body).get("goal") if response.status == 201 else None
    return Answer(response.status, goal, time.monotonic() - started)


class Traffic:
    """Signups to a server from ``clients`` threads, each one after the other, until stopped."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._runs = [self._pool.submit(self._run) for _ in range(clients)]

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for run in self._runs:
            run.result(60)
        self._pool.shutdown()
        return self.answers

    def _run(self) -> None:
        while not self._stop.is_set():
            answer = signup(self.port)
            with self._lock:
                self.answers.append(answer)


def goals_of(answers: Sequence[Answer]) -> list[str]:
    """The event ids of the signups answered 2xx."""
    return [a.goal for a in answers if 200 <= a.status < 300 and a.goal is not None]
