"""The ``goalqueue`` command: send goals, run workers, inspect and repair the queue.

It starts with the core install alone (what a web app installs): ``send``, ``stats``, ``dead``
and ``spool`` need nothing more. ``worker``, ``sandbox`` and ``demo`` import their modules only
when they run (and ``goalqueue --help`` when it lists them), and without their extra they say in
one line which one to install.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

from goalqueue.config import get_settings
from goalqueue.deadletters import DeadLetter, DeadLetters
from goalqueue.errors import ConfigError, EnqueueError, InvalidGoal
from goalqueue.keys import PER_CALL, Keys
from goalqueue.producer import GoalQueue, connect
from goalqueue.spool import Spool
from goalqueue.stats import collect

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def printable(value: object) -> str:
    """``value`` as text with terminal control characters escaped: event data is untrusted."""
    return str(value).translate(_CONTROL)


@dataclass(frozen=True)
class Extra:
    """One of goalqueue's pip extras, and the top-level modules of what it installs."""

    name: str
    modules: frozenset[str]

    def explain(self, exc: ModuleNotFoundError, command: str) -> str:
        """The one line for ``goalqueue COMMAND`` that lacks this extra; re-raises ``exc`` when
        the missing module is not one this extra installs (a bug, not an install to fix)."""
        missing = (exc.name or "").partition(".")[0]
        if missing not in self.modules:
            raise exc
        return (
            f"goalqueue {command} needs the {self.name} extra (no module named {missing!r}):"
            f" pip install 'goalqueue[{self.name}]'"
        )


WORKER = Extra(
    "worker", frozenset({"celery", "kombu", "httpx", "httpx_aiohttp", "aiohttp", "packaging"})
)
SANDBOX = Extra("sandbox", frozenset({"starlette", "uvicorn"}))
DEMO = Extra("demo", WORKER.modules | SANDBOX.modules)


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand imported only when it is looked up (``module:attribute``), the extra it
    needs, and the modules that only its child processes import, checked when it runs."""

    target: str
    extra: Extra
    child_modules: tuple[str, ...] = ()

    def load(self) -> click.Command:
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), self.target
        return command

    def check_children(self) -> None:
        for name in self.child_modules:
            importlib.import_module(name)


class LazyGroup(click.Group):
    """click's lazy-loading group: ``lazy`` subcommands are imported when looked up, and one
    whose extra is missing becomes a command that says which extra to install."""

    def __init__(self, *args: Any, lazy: dict[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = self.lazy.get(cmd_name)
        if lazy is None:
            return super().get_command(ctx, cmd_name)
        try:
            return lazy.load()
        except ModuleNotFoundError as exc:
            return _unavailable(cmd_name, lazy.extra, lazy.extra.explain(exc, cmd_name))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click does, and then (only for a command about to run, not for the listing in
        ``--help``) imports what its child processes need."""
        name, command, rest = super().resolve_command(ctx, args)
        lazy = self.lazy.get(name or "")
        if name is not None and lazy is not None:
            try:
                lazy.check_children()
            except ModuleNotFoundError as exc:
                command = _unavailable(name, lazy.extra, lazy.extra.explain(exc, name))
        return name, command, rest


def _unavailable(name: str, extra: Extra, message: str) -> click.Command:
    """A command that takes any arguments, prints ``message`` and exits with status 1; listed
    in ``goalqueue --help`` with the extra to install."""

    def fail(args: Sequence[str]) -> NoReturn:
        raise SystemExit(message)

    return click.Command(
        name,
        callback=fail,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        help=message,
        short_help=f"Not installed: pip install 'goalqueue[{extra.name}]'",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True},
    )


@click.group(
    cls=LazyGroup,
    lazy={
        "sandbox": LazyCommand("goalqueue.sandbox:sandbox_command", SANDBOX),
        # The demo's worker is a child process: `python -m celery -A workers worker`.
        "demo": LazyCommand("goalqueue.demo:demo_command", DEMO, ("celery", "httpx_aiohttp")),
    },
)
@click.version_option(package_name="goalqueue")
def main() -> None:
    """Durable delivery of server-side DataFast goals through Celery on Redis."""


def _queue() -> GoalQueue:
    try:
        return GoalQueue(settings=get_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("visitor_id")
@click.argument("name")
@click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--description", "-d", default=None, help="Free text stored with the goal.")
def send(visitor_id: str, name: str, metadata: Sequence[str], description: str | None) -> None:
    """Validate and enqueue one goal; prints its event id."""
    pairs = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        pairs[key] = value
    try:
        event_id = _queue().track_goal(
            visitor_id, name, metadata=pairs or None, description=description
        )
    except InvalidGoal as exc:
        click.echo("error: the goal was not enqueued:", err=True)
        for field, reasons in exc.errors.items():
            for reason in reasons:
                click.echo(f"  {printable(field)}: {printable(reason)}", err=True)
        sys.exit(2)
    except EnqueueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(event_id)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes to run [default: one per core].",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(processes: int | None, celery_args: Sequence[str]) -> None:
    """Run a worker node: a Celery worker process per core, each delivering on its own event
    loop. Takes any `celery worker` option (see `celery -A workers worker --help`)."""
    try:
        from workers.node import Node, default_processes
    except ModuleNotFoundError as exc:
        raise SystemExit(WORKER.explain(exc, "worker")) from None

    try:
        get_settings().require_credentials()
    except ConfigError as exc:
        raise SystemExit(f"goalqueue worker cannot start: {exc}") from None
    count = processes or default_processes()
    if count == 1:
        from workers import app

        app.worker_main(["worker", "--loglevel=INFO", *celery_args])
        return
    sys.exit(Node(count, celery_args).run())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(as_json: bool) -> None:
    """Goals queued, waiting, delivered and dead, and whether delivery is paused."""
    figures = _read(collect)
    if as_json:
        click.echo(json.dumps(figures))
        return
    for name, value in figures.items():
        if name == "paused_until" and value is not None:
            value = f"{value:.0f} (in {max(0.0, value - time.time()):.0f} s)"
        click.echo(f"{name:>20}  {printable('-' if value is None else value)}")


@main.group()
def dead() -> None:
    """Inspect, replay and purge dead letters."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def dead_list(as_json: bool) -> None:
    """List the dead letters, oldest first."""
    letters = sorted(_read(lambda client, keys: list(DeadLetters(client, keys))), key=_dead_at)
    if as_json:
        click.echo(json.dumps([letter.summary() for letter in letters]))
        return
    if not letters:
        click.echo("no dead letters")
        return
    rows = [
        (
            s["event_id"],
            s["name"],
            s["visitor_id"],
            s["status_code"],
            s["reason"],
            s["attempts"],
            s["error"],
        )
        for s in (letter.summary() for letter in letters)
    ]
    _table(("EVENT_ID", "NAME", "VISITOR", "STATUS", "REASON", "ATTEMPTS", "ERROR"), rows)


@dead.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dead_replay(event_ids: Sequence[str], replay_all: bool) -> None:
    """Put dead goals back on the queue with their event ids."""
    if replay_all == bool(event_ids):
        raise click.UsageError("give either --all or one or more EVENT_IDs")

    def replay(client: Any, keys: Keys) -> tuple[list[str], list[str]]:
        letters = DeadLetters(client, keys)
        wanted = letters.all_ids() if replay_all else list(event_ids)
        with click.progressbar(length=len(wanted), label="replaying", file=sys.stderr) as bar:
            done = []
            for start in range(0, len(wanted), 100):
                chunk = wanted[start : start + 100]
                done += letters.replay(chunk)
                bar.update(len(chunk))
        return wanted, done

    wanted, done = _read(replay)
    click.echo(f"replayed {len(done)} of {len(wanted)} dead letter(s)")
    missing = sorted(set(wanted) - set(done))
    for event_id in missing:
        click.echo(
            f"  not replayed (not a dead letter, or poison): {printable(event_id)}", err=True
        )
    if missing and not replay_all:
        sys.exit(1)


@dead.command("purge")
@click.confirmation_option(prompt="Delete every dead letter for good?")
def dead_purge() -> None:
    """Delete every dead letter."""
    count = _read(lambda client, keys: DeadLetters(client, keys).purge())
    click.echo(f"purged {count} dead letter(s)")


@main.group("spool")
def spool_group() -> None:
    """See and re-send goals kept on local disk while Redis was unreachable."""


_SPOOL_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Spool directory (default: GOALQUEUE_SPOOL_DIR).",
)


def _spool(directory: str | None) -> Spool:
    import sqlite3

    try:
        directory = directory or get_settings().spool_dir
        if not directory:
            raise click.UsageError("GOALQUEUE_SPOOL_DIR is not set; give --dir")
        return Spool(directory)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(f"cannot open the spool in {directory}: {exc}") from exc


@spool_group.command("status")
@_SPOOL_DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def spool_status(directory: str | None, as_json: bool) -> None:
    """How many goals wait in the spool, and since when."""
    spool = _spool(directory)
    oldest = spool.oldest()
    figures = {
        "directory": str(spool.directory),
        "pending": spool.pending(),
        "oldest_age_seconds": None if oldest is None else round(time.time() - oldest, 3),
    }
    if as_json:
        click.echo(json.dumps(figures))
        return
    for name, value in figures.items():
        click.echo(f"{name:>20}  {printable('-' if value is None else value)}")


@spool_group.command("flush")
@_SPOOL_DIR
@click.option("--batch", default=PER_CALL, show_default=True, help="Goals per Redis call.")
def spool_flush(directory: str | None, batch: int) -> None:
    """Re-send the spooled goals to Redis now; exits 1 if Redis still cannot take them."""
    spool = _spool(directory)
    queue = _queue()
    sent = 0
    with click.progressbar(length=spool.pending(), label="re-sending", file=sys.stderr) as bar:

        def progress(count: int) -> None:
            nonlocal sent
            sent += count
            bar.update(count)

        try:
            spool.flush(queue, batch=batch, progress=progress)
        except EnqueueError as exc:
            failure: EnqueueError | None = exc
        else:
            failure = None
    click.echo(f"re-sent {sent} spooled goal(s)")
    if failure is not None:
        raise click.ClickException(f"{spool.pending()} goal(s) still wait: {failure}")


def _read(action: Any) -> Any:
    """Run ``action(redis, keys)``, turning connection trouble into a one-line error."""
    import redis

    try:
        settings = get_settings()
        return action(connect(settings), settings.keys)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis: {exc}") from exc


def _dead_at(letter: DeadLetter) -> float:
    return letter.dead_at


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [[printable("-" if v is None else v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i][:60]) for r in cells)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(c[:60].ljust(w) for c, w in zip(row, widths, strict=True)))
