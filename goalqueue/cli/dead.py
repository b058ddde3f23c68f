"""``goalqueue dead``: list, replay and purge dead letters.

A corrupt letter (a value of the dead-letter hash that is not a dead letter) never stops them:
each reports it on stderr and acts on the rest. ``list --json`` prints it among the others with
``"corrupt": true``; ``purge`` keeps it unless given ``--corrupt``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click
import redis

from goalqueue.cli.context import read
from goalqueue.deadletters import CorruptLetter, DeadLetter, DeadLetters
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
    """List the dead letters, oldest first (corrupt ones last)."""
    letters, corrupt = read(lambda client, keys: DeadLetters(client, keys).scan())
    letters.sort(key=_dead_at)
    summaries = [letter.summary() for letter in letters]
    if as_json:
        click.echo(json.dumps([*summaries, *(letter.summary() for letter in corrupt)]))
    elif letters:
        rows = [[summary[field] for field in COLUMNS.values()] for summary in summaries]
        click.echo("\n".join(table(list(COLUMNS), rows)))
    elif not corrupt:
        click.echo("no dead letters")
    _report(corrupt, "skipped")


@dead.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dead_replay(event_ids: Sequence[str], replay_all: bool) -> None:
    """Put dead goals back on the queue with their event ids."""
    if replay_all == bool(event_ids):
        raise click.UsageError("give either --all or one or more EVENT_IDs")

    def replay(client: redis.Redis, keys: Keys) -> tuple[list[str], list[str], list[CorruptLetter]]:
        letters = DeadLetters(client, keys)
        wanted = letters.all_ids() if replay_all else list(event_ids)
        done: list[str] = []
        corrupt: list[CorruptLetter] = []
        with click.progressbar(length=len(wanted), label="replaying", file=sys.stderr) as bar:
            for start in range(0, len(wanted), REPLAY_CHUNK):
                chunk = wanted[start : start + REPLAY_CHUNK]
                replayed, unreadable = letters.replay(chunk)
                done += replayed
                corrupt += unreadable
                bar.update(len(chunk))
        return wanted, done, corrupt

    wanted, done, corrupt = read(replay)
    click.echo(f"replayed {len(done)} of {len(wanted)} dead letter(s)")
    missing = sorted(set(wanted) - set(done) - {letter.event_id for letter in corrupt})
    for event_id in missing:
        click.echo(
            f"  not replayed (not a dead letter, or poison): {printable(event_id)}", err=True
        )
    _report(corrupt, "not replayed")
    if (missing or corrupt) and not replay_all:
        sys.exit(1)


@dead.command("purge")
@click.option("--corrupt", "and_corrupt", is_flag=True, help="Delete corrupt letters too.")
@click.confirmation_option(prompt="Delete every dead letter for good?")
def dead_purge(and_corrupt: bool) -> None:
    """Delete every dead letter (corrupt ones only with --corrupt)."""
    count, kept = read(lambda client, keys: DeadLetters(client, keys).purge(and_corrupt))
    click.echo(f"purged {count} dead letter(s)")
    _report(kept, "kept (delete them with --corrupt)")


def _report(corrupt: list[CorruptLetter], done: str) -> None:
    """Tell the operator, on stderr, about the corrupt letters a command left alone."""
    if not corrupt:
        return
    click.echo(f"{done}: {len(corrupt)} corrupt dead letter(s), not readable as one:", err=True)
    for letter in corrupt:
        click.echo(f"  {printable(letter.event_id)}: {printable(letter.error)}", err=True)


def _dead_at(letter: DeadLetter) -> float:
    return letter.dead_at
