"""``goalqueue dead``: list, replay and purge dead letters."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click
import redis

from goalqueue.cli.context import read
from goalqueue.deadletters import DeadLetter, DeadLetters
from goalqueue.keys import Keys
from goalqueue.terminal import printable, table

COLUMNS = {
    "EVENT_ID": "event_id",
    "NAME": "name",
    "VISITOR": "visitor_id",
    "STATUS": "status_code",
    "REASON": "reason",
    "ATTEMPTS": "attempts",
    "ERROR": "error",
}
# Dead letters per REPLAY round trip, so that the progress bar moves.
REPLAY_CHUNK = 100


@click.group()
def dead() -> None:
    """Inspect, replay and purge dead letters."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def dead_list(as_json: bool) -> None:
    """List the dead letters, oldest first."""
    letters = sorted(read(lambda client, keys: list(DeadLetters(client, keys))), key=_dead_at)
    summaries = [letter.summary() for letter in letters]
    if as_json:
        click.echo(json.dumps(summaries))
    elif not letters:
        click.echo("no dead letters")
    else:
        rows = [[summary[field] for field in COLUMNS.values()] for summary in summaries]
        click.echo("\n".join(table(list(COLUMNS), rows)))


@dead.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dead_replay(event_ids: Sequence[str], replay_all: bool) -> None:
    """Put dead goals back on the queue with their event ids."""
    if replay_all == bool(event_ids):
        raise click.UsageError("give either --all or one or more EVENT_IDs")

    def replay(client: redis.Redis, keys: Keys) -> tuple[list[str], list[str]]:
        letters = DeadLetters(client, keys)
        wanted = letters.all_ids() if replay_all else list(event_ids)
        with click.progressbar(length=len(wanted), label="replaying", file=sys.stderr) as bar:
            done = []
            for start in range(0, len(wanted), REPLAY_CHUNK):
                chunk = wanted[start : start + REPLAY_CHUNK]
                done += letters.replay(chunk)
                bar.update(len(chunk))
        return wanted, done

    wanted, done = read(replay)
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
    count = read(lambda client, keys: DeadLetters(client, keys).purge())
    click.echo(f"purged {count} dead letter(s)")


def _dead_at(letter: DeadLetter) -> float:
    return letter.dead_at
