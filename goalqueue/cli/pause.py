"""``goalqueue pause`` and ``goalqueue resume``: stop and restart delivery by hand, for every
worker (see :mod:`goalqueue.pausing`)."""

from __future__ import annotations

import time

import click
import redis

from goalqueue import pausing
from goalqueue.cli.context import parsed, read
from goalqueue.config import get_settings
from goalqueue.errors import ConfigError
from goalqueue.keys import Keys
from goalqueue.pausing import HandPause
from goalqueue.scripts import Scripts
from goalqueue.terminal import printable


@click.command()
@click.option(
    "--for",
    "seconds",
    metavar="DURATION",
    callback=parsed(pausing.parse_duration),
    help="How long: 30s, 10m, 2h, 1d. Without it, until `goalqueue resume`.",
)
@click.option("--reason", default="", help="Free text, shown wherever the pause is.")
def pause(seconds: float | None, reason: str) -> None:
    """Stop sending goals, on every worker, until `goalqueue resume` (or for a while). Goals
    wait; none is dropped or dead-lettered, and max age leaves the pause out."""
    max_age = _max_age()
    by, now = pausing.operator(), time.time()
    until = now + seconds if seconds is not None else None

    def run(client: redis.Redis, keys: Keys) -> tuple[HandPause | None, bool]:
        scripts = Scripts(client, keys)
        return pausing.pause(scripts, now, until=until, reason=reason, by=by, max_age=max_age)

    before, active = read(run)
    kept = before is not None and active
    since = before.since if before is not None and active else now
    after = HandPause(since, until, reason, by, now)
    click.echo(f"{'pause updated' if kept else 'paused by hand'}: {_line(after, now)}")
    if before is not None and active:
        click.echo(f"  was: {_line(before, now)}")
    _datafast(now)


@click.command()
def resume() -> None:
    """End the pause by hand (`goalqueue pause`). A pause DataFast's answers called for is
    left alone: it ends by itself."""
    max_age, now = _max_age(), time.time()
    before, active = read(lambda client, keys: pausing.resume(Scripts(client, keys), now, max_age))
    if before is not None and active:
        click.echo(f"resumed: the pause by hand is over (it was: {_line(before, now)})")
    else:
        click.echo("not paused by hand: nothing to resume")
    _datafast(now)


def _datafast(now: float) -> None:
    """Say whether a pause DataFast called for is in force too."""
    until, reason = read(lambda client, keys: client.hmget(keys.pause, "until", "reason"))
    if until is not None:
        left = max(0.0, float(until) - now)
        click.echo(
            f"DataFast's pause ({printable(reason or '')}) is in force as well: it ends by itself"
            f" (a goal probes the API in {left:.0f} s)"
        )


def _line(hand: HandPause, now: float) -> str:
    return printable(pausing.describe(hand, now))


def _max_age() -> float:
    try:
        return get_settings().max_age_seconds
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
