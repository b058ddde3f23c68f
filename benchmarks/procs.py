"""Child processes for the benchmark: started in their own process group, always stopped.

Every process the harness starts goes through :class:`Processes`, a context manager that
stops them all on the way out (also on an exception or Ctrl+C): SIGTERM to the process
group, then SIGKILL if it has not exited in time. Process groups matter because Celery's
prefork pool forks children that must go too. A supervisor such as ``goalqueue worker`` may
start its workers in sessions of their own: a child's CPU is that of its whole process tree
(its group and every descendant), and whatever of that tree outlives the stop is killed too.
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
        """User + system CPU of this child's process tree (see :meth:`ProcessTable.cpu_seconds`)."""
        return ProcessTable.read().cpu_seconds(self.pid)


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
        tree = {stat.pid: stat.started for stat in ProcessTable.read().tree(child.pid)}
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=timeout)
        # Whatever is left of the group (a prefork child, a stuck process) is killed outright,
        # and so is any descendant in a session of its own (the same process, by start time).
        _signal_group(child.pid, signal.SIGKILL)
        for stat in ProcessTable.read().stats:
            if tree.get(stat.pid) == stat.started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(stat.pid, signal.SIGKILL)
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


@dataclass(frozen=True)
class ProcessStat:
    """What ``/proc/<pid>/stat`` says about one process."""

    pid: int
    ppid: int
    pgrp: int
    started: int
    cpu_ticks: int


def _read_stat(pid: str) -> ProcessStat | None:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # Fields after the parenthesised command: state(3) ppid(4) pgrp(5) ... utime(14)
    # stime(15) cutime(16) cstime(17) ... starttime(22), here counted from state = 0.
    fields = stat[stat.rfind(b")") + 2 :].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ProcessStat(int(pid), int(fields[1]), int(fields[2]), int(fields[19]), ticks)


@dataclass(frozen=True)
class ProcessTable:
    """Every process on the machine at one moment (one pass over ``/proc``)."""

    stats: list[ProcessStat]

    @classmethod
    def read(cls) -> ProcessTable:
        found = (_read_stat(entry) for entry in os.listdir("/proc") if entry.isdigit())
        return cls([stat for stat in found if stat is not None])

    def tree(self, root: int) -> list[ProcessStat]:
        """The processes of process group ``root`` and every descendant of ``root``."""
        children: dict[int, list[ProcessStat]] = {}
        for stat in self.stats:
            children.setdefault(stat.ppid, []).append(stat)
        found = {stat.pid: stat for stat in self.stats if root in (stat.pgrp, stat.pid)}
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child.pid not in found:
                    found[child.pid] = child
                    todo.append(child.pid)
        return list(found.values())

    def cpu_seconds(self, root: int) -> float:
        """User + system CPU seconds of ``root``'s process tree (its process group and its
        descendants, in sessions of their own too), with the CPU of the children each of
        them has reaped."""
        return sum(stat.cpu_ticks for stat in self.tree(root)) / _CLOCK_TICKS


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
