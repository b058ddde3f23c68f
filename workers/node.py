"""One worker node: ``goalqueue worker`` runs a Celery worker process per core and minds them.

A worker process delivers on one event loop, so it uses one core; a node of N cores runs N of
them, and a node of one core runs one, supervised all the same. Each is a plain
``celery -A workers worker`` (hostname ``worker<i>@<host>``, ``worker1@<host>`` for the only one),
in its own process group, so that signals reach it only through this supervisor:

* SIGTERM or SIGINT (Ctrl-C, ``docker stop``) is passed on to every process: a warm shutdown,
  in which each finishes and records the goals it has in flight. A second one makes it cold.
* A process that dies on its own (a crash, the OOM killer) is started again, after a pause that
  doubles while it keeps dying young. Its goals are not lost: the ledger has them.
* The supervisor exits once every process has, with the worst exit status among them.

Settings are checked before anything starts, so a bad one is reported once, in one line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

logger = logging.getLogger(__name__)

RESTART_PAUSE_SECONDS = 1.0
RESTART_PAUSE_MAX_SECONDS = 30.0
# A process that lived this long before dying is restarted after the shortest pause again.
HEALTHY_SECONDS = 60.0
POLL_SECONDS = 0.2
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def default_processes() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Child:
    """One Celery worker process of the node."""

    index: int
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = RESTART_PAUSE_SECONDS
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)


class Node:
    """Starts ``processes`` Celery workers and keeps them running until told to stop."""

    def __init__(self, processes: int, celery_args: Sequence[str]) -> None:
        name, args = _split_hostname(celery_args)
        self.children = [
            Child(i, worker_command([*args, f"--hostname={_numbered(name, i)}"]))
            for i in range(1, processes + 1)
        ]
        self.stopping = False

    def run(self) -> int:
        """Run until every worker has stopped; returns the exit status for the node."""
        for sig in FORWARDED:
            signal.signal(sig, self._forward)
        for child in self.children:
            child.start()
        while not self._all_stopped():
            self._restart_the_dead()
            time.sleep(POLL_SECONDS)
        return max((_status(child) for child in self.children), default=0)

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True
        for child in self.children:
            child.signal(sig)

    def _all_stopped(self) -> bool:
        return self.stopping and all(
            child.process is None or child.process.poll() is not None for child in self.children
        )

    def _restart_the_dead(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if self.stopping or child.process is None or child.process.poll() is None:
                continue
            if child.restart_at is None:
                lived = now - child.started
                child.pause = (
                    RESTART_PAUSE_SECONDS
                    if lived > HEALTHY_SECONDS
                    else min(child.pause * 2, RESTART_PAUSE_MAX_SECONDS)
                )
                child.restart_at = now + child.pause
                logger.warning(
                    "goalqueue worker: process %d exited with %s; starting it again in %.0f s",
                    child.index,
                    child.process.returncode,
                    child.pause,
                )
            elif now >= child.restart_at:
                child.start()


def worker_command(celery_args: Sequence[str]) -> list[str]:
    """The command of one worker process: ``celery -A workers worker`` at INFO by default."""
    return [
        sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO", *celery_args
    ]  # fmt: skip


def _split_hostname(args: Sequence[str]) -> tuple[str, list[str]]:
    """The ``-n/--hostname`` among ``args`` (default ``worker@%h``), and the other args."""
    name, rest, items = "worker@%h", [], iter(args)
    for arg in items:
        if arg in ("-n", "--hostname"):
            name = next(items, name)
        elif arg.startswith("--hostname="):
            name = arg.partition("=")[2]
        else:
            rest.append(arg)
    return name, rest


def _numbered(hostname: str, index: int) -> str:
    """``worker@%h`` -> ``worker1@%h``: Celery needs a distinct node name per process."""
    name, at, host = hostname.partition("@")
    return f"{name}{index}{at}{host}"


def _status(child: Child) -> int:
    code = child.process.returncode if child.process is not None else 0
    return code if code is not None and code >= 0 else 128 - (code or 0)
