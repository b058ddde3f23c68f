"""The ``goalqueue`` command: send goals, run workers, inspect and repair the queue.

It starts with the core install alone (what a web app installs): ``send``, ``stats``, ``show``,
``dead``, ``spool``, ``pause``, ``resume`` and ``upgrade`` need nothing more. Each subcommand but
``send`` and ``stats`` lives in a module of its own, imported when it is looked up (and by
``goalqueue --help``, to list it): ``worker``, ``sandbox``, ``metrics`` and ``demo`` without
their extra say in one line which one to install.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence

import click

from goalqueue import logs
from goalqueue.cli.context import queue, read
from goalqueue.cli.lazy import DEMO, METRICS, SANDBOX, LazyCommand, LazyGroup
from goalqueue.config import get_settings
from goalqueue.errors import ConfigError, EnqueueError, InvalidGoal
from goalqueue.pausing import HandPause, describe
from goalqueue.stats import collect
from goalqueue.terminal import figures, printable

__all__ = ["main"]


@click.group(
    cls=LazyGroup,
    lazy={
        "dead": LazyCommand("goalqueue.cli.dead:dead"),
        "spool": LazyCommand("goalqueue.cli.spool:spool"),
        "pause": LazyCommand("goalqueue.cli.pause:pause"),
        "resume": LazyCommand("goalqueue.cli.pause:resume"),
        "show": LazyCommand("goalqueue.cli.show:show"),
        "upgrade": LazyCommand("goalqueue.cli.upgrade:upgrade"),
        # Imports the worker package only when it runs, and names the worker extra if missing.
        "worker": LazyCommand("goalqueue.cli.worker:worker"),
        "sandbox": LazyCommand("goalqueue.sandbox:sandbox_command", SANDBOX),
        "metrics": LazyCommand("goalqueue.metrics:metrics_command", METRICS),
        # The demo's worker is a child process: `python -m celery -A workers worker`.
        "demo": LazyCommand("goalqueue.demo:demo_command", DEMO, ("celery", "httpx_aiohttp")),
    },
)
@click.version_option(package_name="goalqueue")
def main() -> None:
    """Durable delivery of server-side DataFast goals through Celery on Redis."""
    try:
        log_format = get_settings().log_format
    except ConfigError:
        return  # a command that needs the settings says what is wrong with them
    if log_format == logs.JSON:
        logs.configure(log_format, logging.WARNING)


@main.command()
@click.argument("visitor_id")
@click.argument("name")
@click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@click.option("--description", "-d", default=None, help="Free text stored with the goal.")
@click.option(
    "--event-id",
    default=None,
    help="The goal's event id (a UUID): sending it again enqueues nothing more.",
)
def send(
    visitor_id: str,
    name: str,
    metadata: Sequence[str],
    description: str | None,
    event_id: str | None,
) -> None:
    """Validate and enqueue one goal (to the spool, if one is set and Redis is down); prints its
    event id."""
    producer = queue()
    try:
        event_id = producer.track_goal(
            visitor_id,
            name,
            metadata=_pairs(metadata) or None,
            description=description,
            event_id=event_id,
        )
    except InvalidGoal as exc:
        click.echo("error: the goal was not enqueued:", err=True)
        for field, reasons in exc.errors.items():
            for reason in reasons:
                click.echo(f"  {printable(field)}: {printable(reason)}", err=True)
        sys.exit(2)
    except EnqueueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        producer.close()  # a spooled goal waits for a web process's flusher or `spool flush`
    click.echo(event_id)


def _pairs(metadata: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        pairs[key] = value
    return pairs


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(as_json: bool) -> None:
    """Goals queued, waiting, delivered and dead, and whether delivery is paused (by
    DataFast's answers, or by hand)."""
    values = read(collect)
    if as_json:
        click.echo(json.dumps(values))
        return
    now = time.time()
    paused_until = values.get("paused_until")
    if paused_until is not None:
        left = max(0.0, paused_until - now)
        values = {**values, "paused_until": f"{paused_until:.0f} (in {left:.0f} s)"}
    if (hand := values.get("paused_by_hand")) is not None:
        values = {**values, "paused_by_hand": describe(HandPause(**hand), now)}
    click.echo("\n".join(figures(values)))
