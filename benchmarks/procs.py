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
        """User + system CPU of this child's process tree (see :func:`tree_cpu_seconds`)."""
        return tree_cpu_seconds(self.pid)


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
        tree = {stat.pid: stat.started for stat in _tree(child.pid)}
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=timeout)
        # Whatever is left of the group (a prefork child, a stuck process) is killed outright,
        # and so is any descendant in a session of its own (the same process, by start time).
        _signal_group(child.pid, signal.SIGKILL)
        for stat in _process_stats():
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


def _process_stats() -> list[ProcessStat]:
    stats = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state(3) ppid(4) pgrp(5) ... utime(14)
        # stime(15) cutime(16) cstime(17) ... starttime(22), here counted from state = 0.
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks = sum(int(value) for value in fields[11:15])
        stats.append(
            ProcessStat(int(entry), int(fields[1]), int(fields[2]), int(fields[19]), ticks)
        )
    return stats


def _tree(root: int) -> list[ProcessStat]:
    """The live processes of process group ``root`` and every live descendant of ``root``."""
    stats = _process_stats()
    children: dict[int, list[ProcessStat]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
    found = {stat.pid: stat for stat in stats if stat.pgrp == root or stat.pid == root}
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid not in found:
                found[child.pid] = child
                todo.append(child.pid)
    return list(found.values())


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root``'s process tree: the live processes of its process
    group and its live descendants (in a session of their own too), with the CPU of the
    children each of them has reaped."""
    return sum(stat.cpu_ticks for stat in _tree(root)) / _CLOCK_TICKS


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
