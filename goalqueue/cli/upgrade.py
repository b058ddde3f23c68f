"""``goalqueue upgrade``: bring what an older goalqueue left in Redis to this version's layout."""

from __future__ import annotations

import time

import click
import redis

from goalqueue.cli.context import read
from goalqueue.config import get_settings
from goalqueue.deadletters import DeadLetters
from goalqueue.keys import Keys
from goalqueue.markers import Markers


@click.command()
def upgrade() -> None:
    """Run once after upgrading goalqueue (safe while workers run, and to run again): pack the
    delivered markers older versions kept as one key a goal, and index every dead letter under
    its reason (as `goalqueue dead recount`)."""
    ttl = get_settings().delivered_ttl_seconds

    def run(client: redis.Redis, keys: Keys) -> tuple[int, int, int]:
        adopted = Markers(client, keys).adopt_legacy(ttl)
        added, removed = DeadLetters(client, keys).recount(time.time())
        return adopted, added, removed

    adopted, added, removed = read(run)
    click.echo(f"delivered markers packed: {adopted}")
    click.echo(f"dead-letter index entries: {added} added, {removed} removed")
