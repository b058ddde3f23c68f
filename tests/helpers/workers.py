"""Real ``celery -A workers worker`` processes, started and stopped by the tests."""

from __future__ import annotations

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
