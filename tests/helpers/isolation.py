"""What keeps a ``unit`` test honest: no TCP connection, no process.

While a unit test runs, connecting an internet socket or starting a process is refused and
recorded; the test then fails with what it tried, even if the code under test swallowed the
refusal (in a thread, or with ``except Exception``). A fixture wider than one test (module
scope) is set up before the guard: a test whose such fixture reaches out is marked by hand.
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any

import pytest

INTERNET = (socket.AF_INET, socket.AF_INET6)


class Refused(BaseException):
    """What a unit test gets when it reaches for the network or a process (not an Exception, so
    ``except Exception`` does not hide it)."""


class Isolation:
    """Refuses and records TCP connections and new processes while installed."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        monkeypatch.setattr(socket.socket, "connect", self._guard_connect(connect))
        monkeypatch.setattr(socket.socket, "connect_ex", self._guard_connect(connect_ex))
        monkeypatch.setattr(subprocess.Popen, "__init__", self._guard_process())
        monkeypatch.setattr(os, "fork", lambda: self._refuse("a fork"))

    def _guard_connect(self, original: Any) -> Any:
        def connect(sock: socket.socket, address: Any) -> Any:
            if sock.family in INTERNET:
                self._refuse(f"a connection to {address}")
            return original(sock, address)

        return connect

    def _guard_process(self) -> Any:
        def init(popen: subprocess.Popen[Any], args: Any, *_: Any, **__: Any) -> None:
            popen._child_created = False  # type: ignore[attr-defined]  # for Popen.__del__
            self._refuse(f"a process: {args}")

        return init

    def _refuse(self, what: str) -> None:
        self.attempts.append(what)
        raise Refused(f"a unit test tried {what}: mark it integration")

    def check(self) -> None:
        if self.attempts:
            pytest.fail(
                "a unit test reached out: " + "; ".join(self.attempts) + ". Mark it integration."
            )
