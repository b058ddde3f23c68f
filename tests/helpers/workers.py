"""Real ``celery -A workers worker`` processes and ``goalqueue worker`` nodes, started and stopped
by the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from goalqueue.config import Settings
from tests.helpers.settings import API_KEY
from tests.helpers.waiting import wait_for


@dataclass
class WorkerProcess:
    """A real ``celery -A workers worker`` process."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        """The pids of this process's children: a node's Celery worker processes."""
        pid = self.process.pid
        try:
            return [
                int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            ]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        """SIGKILL the process and then, so that none is left behind, a node's children."""
        if self.process.poll() is None:
            children = self.children()
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)

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
        """A ``celery -A workers worker`` process."""
        command = [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO"]
        return self._start(command, args, env, 1 if ready else 0)

    def start_node(
        self, processes: int, *args: str, env: dict[str, str] | None = None
    ) -> WorkerProcess:
        """A ``goalqueue worker --processes N`` node, once each of its processes is ready."""
        command = [
            str(Path(sys.executable).parent / "goalqueue"),
            "worker",
            f"--processes={processes}",
        ]
        return self._start(command, args, env, processes)

    def _start(
        self, command: list[str], args: tuple[str, ...], env: dict[str, str] | None, ready: int
    ) -> WorkerProcess:
        index = len(self.started)
        log = self.tmp_path / f"worker-{index}.log"
        options = [f"--hostname=test{index}@%h", "--without-mingle", "--without-gossip", *args]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*command, *options],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
            )
        worker = WorkerProcess(process, log)
        self.started.append(worker)
        if ready:
            wait_for(
                lambda: worker.output().count("ready.") >= ready or process.poll() is not None, 60
            )
            assert process.poll() is None, worker.output()
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def worker_env(settings: Settings, api_url: str, api_key: str = API_KEY) -> dict[str, str]:
    """The environment of a worker process that runs with ``settings`` against ``api_url``."""
    return {
        **os.environ,
        "GOALQUEUE_BROKER_URL": settings.broker_url,
        "GOALQUEUE_NAMESPACE": settings.namespace,
        "DATAFAST_API_KEY": api_key,
        "DATAFAST_API_URL": api_url,
        "GOALQUEUE_RETRY_BASE_SECONDS": str(settings.retry_base_seconds),
        "GOALQUEUE_RETRY_MAX_SECONDS": str(settings.retry_max_seconds),
        "GOALQUEUE_HTTP_TIMEOUT_SECONDS": str(settings.http_timeout_seconds),
        "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": str(settings.visibility_timeout_seconds),
        "GOALQUEUE_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
    }
