"""Child processes for the benchmark: started in their own process group, always stopped.

Every process the harness starts goes through :class:`Processes`, a context manager that
stops them all on the way out (also on an exception or Ctrl+C): SIGTERM to the process
group, then SIGKILL if it has not exited in time. Process groups matter because Celery's
prefork pool forks children that must go too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOCK_PATH = Path(tempfile.gettempdir()) / "goalqueue-benchmarks.lock"


@contextmanager
def exclusive(timeout: float) -> Iterator[None]:
    """Hold the machine-wide benchmark lock: two runs would flush each other's Redis
    databases and fight over the same two cores. Waits up to ``timeout`` seconds for it."""
    with LOCK_PATH.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"another benchmark run held {LOCK_PATH} for {timeout:.0f} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Child:
    """One started process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self, tail: int = 4000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-tail:]

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process in this child's process group."""
        return group_cpu_seconds(self.pid)


@dataclass
class Processes:
    """Starts child processes and guarantees they are stopped."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        capture_stdout: bool = False,
    ) -> Child:
        """Start ``argv``; its output goes to ``<log_dir>/<name>.log`` unless captured."""
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE if capture_stdout else out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        """SIGTERM the child's process group, then SIGKILL it after ``timeout`` seconds."""
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=timeout)
        # Whatever is left of the group (a prefork child, a stuck process) is killed outright.
        _signal_group(child.pid, signal.SIGKILL)
        if child.alive():
            child.process.wait(timeout=10)
        if child.process.stdout is not None:
            child.process.stdout.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def read_line(stream: IO[bytes], prefix: str, timeout: float) -> str:
    """The first line of ``stream`` that starts with ``prefix``, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
    raise TimeoutError(f"no line starting with {prefix!r} within {timeout} s: {buffer[-500:]!r}")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ... utime(14) stime(15)
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``), for spotting load
    from processes outside the benchmark."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def own_cpu_seconds() -> float:
    """User + system CPU of this process (the harness)."""
    times = os.times()
    return times.user + times.system
