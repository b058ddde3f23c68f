"""The ``goalqueue demo`` command: set everything up, play the scenario, report, clean up."""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import NoReturn

import click
import redis

from goalqueue.config import Settings
from goalqueue.demo.brokers import BROKERS, start_broker
from goalqueue.demo.errors import DemoFailed, TimedOut
from goalqueue.demo.report import Progress, print_outcome
from goalqueue.demo.scenario import Run, sandbox_state, start_worker
from goalqueue.errors import EnqueueError
from goalqueue.producer import GoalQueue
from goalqueue.sandbox import Sandbox


def report(run: Run, timed_out: str | None) -> list[str]:
    """Print the table and the verdict; returns the problems (none: success)."""
    run.finish()
    found = print_outcome(run.sent, run.sandbox, run.queue.redis, run.elapsed)
    return [f"timed out waiting for {timed_out}", *found] if timed_out else found


def run_demo(choice: str, timeout: float, unknown_visitors: bool, log: Path) -> list[str]:
    """Set everything up, play the scenario, report; returns the problems found."""
    started = time.monotonic()
    deadline = started + timeout
    with ExitStack() as stack:
        broker = start_broker(choice, stack)
        click.echo(f"Broker: {broker.description}.")
        sandbox = stack.enter_context(Sandbox(sandbox_state(unknown_visitors)))
        click.echo(f"DataFast sandbox: {sandbox.url}")
        worker = start_worker(stack, broker.url, sandbox.url, log, deadline)
        ready = time.monotonic() - started
        click.echo(f"Worker: pid {worker.pid}, one event loop, ready at {ready:.1f} s.")
        queue = GoalQueue(settings=Settings(broker_url=broker.url))
        stack.callback(queue.redis.close)
        run = Run(queue, sandbox, Progress(sys.stdout.isatty()), started, deadline)
        try:
            run.play()
        except TimedOut as exc:
            return report(run, str(exc))
        return report(run, None)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so everything started is stopped."""

    def interrupt(signum: int, frame: object) -> NoReturn:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("demo")
@click.option(
    "--broker",
    "choice",
    type=click.Choice(["auto", *BROKERS]),
    default="auto",
    show_default=True,
    help="Where Redis comes from; auto tries env, then redis-server, then fakeredis.",
)
@click.option(
    "--timeout",
    default=90.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Give up after this many seconds.",
)
@click.option(
    "--unknown-visitors",
    is_flag=True,
    hidden=True,
    help="The sandbox knows no visitor, so every goal is refused (404): a run that fails.",
)
def demo_command(choice: str, timeout: float, unknown_visitors: bool) -> None:
    """Run the whole pipeline here: a broker, the DataFast sandbox, a real worker, goals."""
    workdir = Path(tempfile.mkdtemp(prefix="goalqueue-demo-"))
    log = workdir / "worker.log"
    try:
        with _sigterm_as_interrupt():
            found = run_demo(choice, timeout, unknown_visitors, log)
    except KeyboardInterrupt:
        shutil.rmtree(workdir)
        click.echo("\nInterrupted: everything the demo started is stopped.", err=True)
        sys.exit(130)
    except (DemoFailed, EnqueueError, redis.RedisError) as exc:
        found = [str(exc)]
    if not found:
        shutil.rmtree(workdir)
        click.echo("OK: every valid goal was delivered; both permanent failures are dead letters.")
        return
    click.echo(f"FAILED: {'; '.join(found)}.", err=True)
    if log.exists():
        click.echo(f"Worker log: {log}", err=True)
    else:
        shutil.rmtree(workdir)
    sys.exit(1)
