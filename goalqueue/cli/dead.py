"""``goalqueue dead``: list, replay, purge and recount dead letters.

``list``, ``replay`` and ``purge`` read the letters oldest first, a page at a time, through the
reasons' indexes, and take the same filters (:mod:`goalqueue.selection`): ``--reason``,
``--name``, ``--status`` (each repeatable: any of them), ``--since``/``--until`` with ``--by
died|enqueued``, and ``--limit`` (at most that many letters, the oldest). ``replay`` and
``purge`` take ``--dry-run``: how many letters they would act on and the oldest few, changing
nothing. A replay by filters is resumable (:mod:`goalqueue.replays`).

A corrupt letter (a value of the dead-letter hash that is not a dead letter) never stops them:
each reports it on stderr and acts on the rest. ``list --json`` prints it among the others with
``"corrupt": true``; ``purge`` keeps it unless given ``--corrupt``. A letter in no index (kept
by a goalqueue from before the indexes, or written by hand) is seen only once ``recount`` has
indexed it: each command says how many there are.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import click
import redis

from goalqueue.cli.context import read
from goalqueue.cli.filters import filters
from goalqueue.deadletters import CorruptLetter, DeadLetter, DeadLetters
from goalqueue.keys import PER_CALL, Keys
from goalqueue.replays import ReplayRun
from goalqueue.selection import Selection
from goalqueue.terminal import printable, table

COLUMNS = {
    "EVENT_ID": "event_id",
    "DIED": "dead_at",
    "NAME": "name",
    "VISITOR": "visitor_id",
    "STATUS": "status_code",
    "REASON": "reason",
    "ATTEMPTS": "attempts",
    "ERROR": "error",
}
# Dead letters per REPLAY call, so that the progress bar moves.
REPLAY_CHUNK = 100
# Letters a --dry-run (or purge's question) shows.
SAMPLE = 10


@click.group()
def dead() -> None:
    """Inspect, replay, purge and recount dead letters."""


@dead.command("list")
@filters
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def dead_list(selection: Selection, limit: int | None, as_json: bool) -> None:
    """List the dead letters the filters select (every one without), oldest first (corrupt
    ones last)."""

    def collect(client: redis.Redis, keys: Keys) -> Found:
        letters = DeadLetters(client, keys)
        return Found.of(letters, selection, limit, PER_CALL)

    found = read(collect)
    summaries = [letter.summary() for letter in found.dead]
    if as_json:
        click.echo(json.dumps([*summaries, *(letter.summary() for letter in found.corrupt)]))
    elif found.dead:
        click.echo("\n".join(_table(found.dead)))
    elif not found.corrupt:
        click.echo("no dead letter matches" if selection.filtered else "no dead letters")
    _report(found.corrupt, "skipped")
    _unindexed(found.unindexed)


@dead.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@filters
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
def dead_replay(
    event_ids: Sequence[str],
    replay_all: bool,
    selection: Selection,
    limit: int | None,
    dry_run: bool,
) -> None:
    """Put dead goals back on the queue with their event ids: those named, or the letters the
    filters select (--all: every one), oldest first. Stopped half way, the same command goes
    on where it stopped and replays nothing twice."""
    if event_ids:
        if replay_all or selection.filtered or limit or dry_run:
            raise click.UsageError("give EVENT_IDs alone, or --all or filters without them")
        _replay_ids(event_ids)
    elif replay_all == selection.filtered:
        raise click.UsageError(
            "--all replays every dead letter: give it no filter"
            if replay_all
            else "give --all, filters, or one or more EVENT_IDs"
        )
    elif dry_run:

        def plan(client: redis.Redis, keys: Keys) -> Found:
            run = ReplayRun.find(client, keys, selection, time.time())
            _resuming(run)
            return Found.of(DeadLetters(client, keys), run.selection, limit, PER_CALL, SAMPLE)

        _show_plan(read(plan), "replay")
    else:
        _replay_selection(selection, limit)


@dead.command("purge")
@filters
@click.option("--corrupt", "and_corrupt", is_flag=True, help="Delete the corrupt letters too.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; change nothing.")
@click.option("--yes", is_flag=True, help="Delete without asking first.")
def dead_purge(
    selection: Selection, limit: int | None, and_corrupt: bool, dry_run: bool, yes: bool
) -> None:
    """Delete dead letters for good: the ones the filters select (every one without), and
    corrupt ones only with --corrupt."""
    if dry_run or not yes:
        found = read(
            lambda client, keys: Found.of(
                DeadLetters(client, keys), selection, limit, PER_CALL, SAMPLE
            )
        )
        _show_plan(found, "purge", and_corrupt)
        if dry_run or not (found.count or (and_corrupt and found.corrupt)):
            return
        click.confirm("Delete them for good?", abort=True)

    def purge(client: redis.Redis, keys: Keys) -> Found:
        letters = DeadLetters(client, keys)
        purged = Found(unindexed=0)
        for _, dead, corrupt in _selected(letters, selection, limit, PER_CALL):
            doomed = [letter.event_id for letter in dead]
            doomed += [letter.event_id for letter in corrupt] if and_corrupt else []
            purged.count += letters.purge(doomed)
            purged.corrupt += [] if and_corrupt else corrupt
        purged.unindexed = letters.unindexed()
        return purged

    purged = read(purge)
    click.echo(f"purged {purged.count} dead letter(s)")
    _report(purged.corrupt, "kept (delete them with --corrupt)")
    _unindexed(purged.unindexed)


@dead.command("recount")
def dead_recount() -> None:
    """Index every dead letter under its reason, and drop index entries whose letter is gone:
    letters kept by a goalqueue from before the indexes, or written or deleted by hand, are
    then seen by the other commands and counted right by reason."""
    added, removed = read(lambda client, keys: DeadLetters(client, keys).recount(time.time()))
    click.echo(f"recounted: {added} index entr(ies) added, {removed} removed")


@dataclass
class Found:
    """What a pass over the selected letters found: the dead letters (or the first few, and
    how many), the corrupt ones met, and how many letters no index holds."""

    unindexed: int
    count: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    corrupt: list[CorruptLetter] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        letters: DeadLetters,
        selection: Selection,
        limit: int | None,
        size: int,
        keep: int | None = None,
    ) -> Found:
        """The letters ``selection`` selects (at most ``limit``), keeping the first ``keep``
        (None: all)."""
        found = cls(unindexed=letters.unindexed())
        for _, dead, corrupt in _selected(letters, selection, limit, size):
            found.count += len(dead)
            found.dead += dead[: None if keep is None else max(0, keep - len(found.dead))]
            found.corrupt += corrupt
        return found


def _selected(
    letters: DeadLetters, selection: Selection, limit: int | None, size: int
) -> Iterator[tuple[int, list[DeadLetter], list[CorruptLetter]]]:
    """The selected letters, oldest first, a page at a time: the index entries read, the dead
    letters selected (no more than ``limit`` in all), and the corrupt ones met."""
    left = sys.maxsize if limit is None else limit
    pages = letters.pages(selection.indexes, selection.window(), selection.matches, size)
    for examined, page in pages:
        dead: list[DeadLetter] = []
        corrupt: list[CorruptLetter] = []
        for letter in page:
            if isinstance(letter, CorruptLetter):
                corrupt.append(letter)
            elif len(dead) < left:
                dead.append(letter)
        left -= len(dead)
        yield examined, dead, corrupt
        if left == 0:
            return


def _replay_ids(event_ids: Sequence[str]) -> None:
    """Replay the letters named; exit 1 unless each was one."""

    def replay(client: redis.Redis, keys: Keys) -> tuple[list[str], list[CorruptLetter]]:
        letters = DeadLetters(client, keys)
        done: list[str] = []
        corrupt: list[CorruptLetter] = []
        with click.progressbar(length=len(event_ids), label="replaying", file=sys.stderr) as bar:
            for start in range(0, len(event_ids), REPLAY_CHUNK):
                chunk = event_ids[start : start + REPLAY_CHUNK]
                replayed, unreadable = letters.replay(chunk)
                done += replayed
                corrupt += unreadable
                bar.update(len(chunk))
        return done, corrupt

    done, corrupt = read(replay)
    click.echo(f"replayed {len(done)} of {len(event_ids)} dead letter(s)")
    missing = sorted(set(event_ids) - set(done) - {letter.event_id for letter in corrupt})
    for event_id in missing:
        click.echo(
            f"  not replayed (not a dead letter, or poison): {printable(event_id)}", err=True
        )
    _report(corrupt, "not replayed")
    if missing or corrupt:
        sys.exit(1)


@dataclass
class Replayed:
    """What a replay by filters did so far: letters selected, replayed, poison among them (no
    goal to send), the corrupt ones met, and how many letters no index holds."""

    selected: int = 0
    replayed: int = 0
    poison: int = 0
    corrupt: list[CorruptLetter] = field(default_factory=list)
    unindexed: int = 0


def _replay_selection(selection: Selection, limit: int | None) -> None:
    """Replay the letters ``selection`` selects, in batches, resuming a run stopped before."""
    so_far = Replayed()
    begun = False

    def replay(client: redis.Redis, keys: Keys) -> None:
        nonlocal begun
        letters = DeadLetters(client, keys)
        run = ReplayRun.find(client, keys, selection, time.time())
        begun = True
        _resuming(run)
        if not run.resumed:
            run.begin(client)
        chosen = run.selection
        length = letters.within(chosen.indexes, chosen.window())
        with click.progressbar(length=length, label="replaying", file=sys.stderr) as bar:
            for examined, dead, corrupt in _selected(letters, chosen, limit, REPLAY_CHUNK):
                done = letters.requeue(dead)
                if done:
                    run.replayed_more(client, len(done))
                so_far.selected += len(dead)
                so_far.replayed += len(done)
                so_far.poison += sum(letter.event is None for letter in dead)
                so_far.corrupt += corrupt
                bar.update(examined)
        if limit is None or so_far.selected < limit:
            run.end(client)
        so_far.unindexed = letters.unindexed()

    try:
        read(replay)
    except (click.ClickException, KeyboardInterrupt):
        if begun:
            click.echo(
                f"stopped after replaying {so_far.replayed} dead letter(s): run the same "
                "command again to go on",
                err=True,
            )
        raise
    met = so_far.selected + len(so_far.corrupt)
    click.echo(f"replayed {so_far.replayed} of {met} dead letter(s)")
    if so_far.poison:
        click.echo(
            f"not replayed: {so_far.poison} poison letter(s), with no goal to send", err=True
        )
    _report(so_far.corrupt, "not replayed")
    _unindexed(so_far.unindexed)


def _resuming(run: ReplayRun) -> None:
    if run.resumed:
        click.echo(
            f"resuming the replay begun {_time(run.started)} ({run.replayed} replayed then); "
            "letters dead since are left to another run",
            err=True,
        )


def _show_plan(found: Found, action: str, and_corrupt: bool = False) -> None:
    """How many letters ``action`` would act on, and the oldest few."""
    if not found.count:
        click.echo(f"no dead letter to {action}")
    else:
        shown = f"; the oldest {len(found.dead)}:" if found.count > len(found.dead) else ":"
        click.echo(f"{found.count} dead letter(s) to {action}{shown}")
        click.echo("\n".join(_table(found.dead)))
    if and_corrupt and found.corrupt:
        click.echo(f"and {len(found.corrupt)} corrupt letter(s) (--corrupt)")
    else:
        _report(found.corrupt, f"not to {action}")
    _unindexed(found.unindexed)


def _table(letters: list[DeadLetter]) -> list[str]:
    rows = []
    for letter in letters:
        summary = letter.summary() | {"dead_at": _time(letter.dead_at)}
        rows.append([summary[name] for name in COLUMNS.values()])
    return table(list(COLUMNS), rows)


def _report(corrupt: list[CorruptLetter], done: str) -> None:
    """Tell the operator, on stderr, about the corrupt letters a command left alone."""
    if not corrupt:
        return
    click.echo(f"{done}: {len(corrupt)} corrupt dead letter(s), not readable as one:", err=True)
    for letter in corrupt:
        click.echo(f"  {printable(letter.event_id)}: {printable(letter.error)}", err=True)


def _unindexed(count: int) -> None:
    if count:
        click.echo(
            f"{count} dead letter(s) in no index (kept by an older goalqueue, or written by "
            "hand) were not seen: run `goalqueue dead recount`",
            err=True,
        )


def _time(at: float) -> str:
    """A unix time as local date and time, to the second."""
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")
