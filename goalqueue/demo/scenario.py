"""The demo's scenario: its goals, its faults, and the one real worker that delivers them.

Valid goals go out in four phases: a steady start, then while delivery is paused by hand (the
worker holds them and sends nothing until the demo resumes), then during a burst of 429s with
``Retry-After``, then during a burst of 503s; a bot's goal (400) and an unknown visitor's (404)
go with the first phase. Each phase starts only when the one before it is over.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from goalqueue import pausing
from goalqueue.demo.brokers import DEMO_KEYS
from goalqueue.demo.errors import DemoFailed, TimedOut
from goalqueue.demo.processes import POLL_SECONDS, stop_process
from goalqueue.demo.report import Progress, Sent, Snapshot
from goalqueue.producer import GoalQueue
from goalqueue.sandbox import DEFAULT_KEY, Sandbox, SandboxState
from goalqueue.scripts import Scripts

VALID_GOALS = (80, 20, 50, 50)
"""Valid goals per phase: a steady start, then while paused by hand, then during the 429 burst,
then during the 503 burst."""
PAUSED_SECONDS = 0.3
"""How long the pause by hand lasts once the worker holds its goals."""
BURST_429 = 3
BURST_503 = 10
RETRY_AFTER_SECONDS = 1
VISITORS = 20
WORKER_SETTINGS = {
    "GOALQUEUE_RETRY_BASE_SECONDS": "0.2",
    "GOALQUEUE_RETRY_MAX_SECONDS": "1",
    "GOALQUEUE_HTTP_TIMEOUT_SECONDS": "2",
    "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": "5",
    "GOALQUEUE_SWEEP_INTERVAL_SECONDS": "0.2",
}


def _visitor(label: str) -> str:
    """A stable visitor id shaped like DataFast's cookie (a UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"goalqueue-demo:{label}"))


BOT = _visitor("bot")
UNKNOWN_VISITOR = _visitor("unknown")
KNOWN_VISITORS = [_visitor(f"visitor-{n}") for n in range(VISITORS)]


def sandbox_state(unknown_visitors: bool) -> SandboxState:
    """Only registered visitors have pageviews; ``unknown_visitors`` registers none."""
    visitors = set() if unknown_visitors else set(KNOWN_VISITORS)
    return SandboxState(visitor_mode="registered", visitors=visitors, bots={BOT})


# --------------------------------------------------------------------------- the worker


def worker_command() -> list[str]:
    """How the demo runs its one real worker."""
    return [
        sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO",
        "--hostname=goalqueue-demo@%h", "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def _worker_env(broker_url: str, api_url: str) -> dict[str, str]:
    """This environment without goalqueue's and DataFast's settings, then the demo's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOALQUEUE_", "DATAFAST_"))}
    return {
        **env,
        **WORKER_SETTINGS,
        "GOALQUEUE_BROKER_URL": broker_url,
        "DATAFAST_API_URL": api_url,
        "DATAFAST_API_KEY": DEFAULT_KEY,
    }


def start_worker(
    stack: ExitStack, broker_url: str, api_url: str, log: Path, deadline: float
) -> subprocess.Popen[bytes]:
    """One real worker (``worker_command``), once it is ready."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            worker_command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_worker_env(broker_url, api_url),
            cwd=log.parent,  # celery imports -A from the working directory first
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the worker
        )
    stack.callback(stop_process, process)
    while "ready." not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise DemoFailed(f"the worker exited with status {process.returncode} at start")
        if time.monotonic() > deadline:
            raise DemoFailed("the worker did not get ready in time")
        time.sleep(POLL_SECONDS)
    return process


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """One demo run: enqueues, watches and waits, redrawing progress as it goes."""

    queue: GoalQueue
    sandbox: Sandbox
    progress: Progress
    started: float
    deadline: float
    sent: Sent = field(default_factory=Sent)

    def snapshot(self) -> Snapshot:
        return Snapshot.read(self.queue.redis, self.sandbox)

    def wait(self, condition: Callable[[Snapshot], bool], what: str) -> None:
        while not condition(snapshot := self.snapshot()):
            if time.monotonic() > self.deadline:
                raise TimedOut(what)
            self.progress.show(snapshot.line(self.sent.count, self.elapsed))
            time.sleep(POLL_SECONDS)

    def finish(self) -> None:
        """The last progress line, where things stand now."""
        self.progress.finish(self.snapshot().line(self.sent.count, self.elapsed))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def enqueue_valid(self, count: int) -> None:
        first = len(self.sent.valid)
        goals = [
            {"visitor_id": KNOWN_VISITORS[n % VISITORS], "name": "signup", "metadata": {"n": n}}
            for n in range(first, first + count)
        ]
        self.sent.valid += self.queue.track_goals(goals)

    def play(self) -> None:
        """The scenario; each burst is armed only when the previous one is used up."""
        steady, held, limited, failing = VALID_GOALS
        self.progress.note(f"Enqueued {steady} valid goals, a bot's goal and an unknown visitor's.")
        self.enqueue_valid(steady)
        self.sent.bot = self.queue.track_goal(BOT, "signup")
        self.sent.unknown = self.queue.track_goal(UNKNOWN_VISITOR, "signup")
        self.wait(lambda s: s.settled(self.sent.count), "the first goals to settle")
        self.paused_by_hand(held)
        self.sandbox.fail_next(429, count=BURST_429, retry_after=RETRY_AFTER_SECONDS)
        self.progress.note(
            f"Rate limit: the next {BURST_429} requests get 429 with "
            f"Retry-After: {RETRY_AFTER_SECONDS}; enqueued {limited} more valid goals."
        )
        self.enqueue_valid(limited)
        self.wait(lambda s: s.answers.get(429, 0) >= BURST_429, "the 429 burst")
        self.sandbox.fail_next(503, count=BURST_503)
        self.progress.note(
            f"Outage: the next {BURST_503} requests get 503; enqueued {failing} more valid goals."
        )
        self.enqueue_valid(failing)
        self.wait(lambda s: s.settled(self.sent.count), "every goal to be delivered or dead")

    def paused_by_hand(self, count: int) -> None:
        """``goalqueue pause``, ``count`` goals held without a request, ``goalqueue resume``."""
        scripts, max_age = Scripts(self.queue.redis, DEMO_KEYS), self.queue.settings.max_age_seconds
        by = "goalqueue demo"
        pausing.pause(scripts, time.time(), until=None, reason="demo", by=by, max_age=max_age)
        requests = sum(self.snapshot().answers.values())
        self.progress.note(f"Paused by hand (goalqueue pause); enqueued {count} more valid goals.")
        self.enqueue_valid(count)
        self.wait(lambda s: s.waiting >= count and s.queued == 0, "the worker to hold the goals")
        ends = time.monotonic() + PAUSED_SECONDS
        self.wait(lambda s: time.monotonic() > ends, "the pause by hand")
        if sum(self.snapshot().answers.values()) != requests:
            raise DemoFailed("the worker sent a goal while delivery was paused by hand")
        pausing.resume(scripts, time.time(), max_age)
        self.progress.note("Resumed (goalqueue resume): no request was sent while paused.")
        self.wait(lambda s: s.settled(self.sent.count), "the held goals to be delivered")
