"""``redis-server`` processes of a test's own, on free ports: the one way the tests start one."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.helpers.ports import free_port
from tests.helpers.waiting import wait_for

DURABLE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
"""AOF with ``appendfsync always`` and no RDB snapshots: a restart (clean or SIGKILL) keeps every
write Redis acknowledged."""


@dataclass
class RedisServer:
    """A ``redis-server`` on a free loopback port, keeping its data in ``directory``.

    ``options`` follow the port, address and directory on the command line (the default is
    :data:`DURABLE`); ``extra`` adds more after them.
    """

    directory: Path
    extra: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    options: tuple[str, ...] = DURABLE

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            *self.options,
            *self.extra,
        ]  # fmt: skip
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._answers, 20)
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop the server: SIGTERM shuts it down cleanly, SIGKILL does not."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop with ``sig`` and start again on the same port, from the same AOF."""
        self.stop(sig)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def _answers(self) -> bool:
        """redis-server answers PING"""
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")
            pytest.fail(f"redis-server exited with {self.process.returncode}:\n{log[-2000:]}")
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            return bool(client.ping())
        except redis.AuthenticationError:
            return True  # it answers, and wants a password (--requirepass)
        except redis.ConnectionError:
            return False
        finally:
            client.close()
