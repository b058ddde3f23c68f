"""``goalqueue show``: where one goal is now, and its attempts (see goalqueue/whereabouts.py)."""

from __future__ import annotations

import json
import time

import click

from goalqueue.cli.context import read
from goalqueue.terminal import figures, printable, table
from goalqueue.whereabouts import Whereabouts, canonical_id, locate, visits


@click.command()
@click.argument("event_id", required=False)
@click.option("--visitor", help="Show this visitor's goals of the last hour instead.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(event_id: str | None, visitor: str | None, as_json: bool) -> None:
    """Where the goal EVENT_ID is now (queued, in flight, waiting, delivered, dead), and its
    attempts; exits 1 if the queue knows nothing of it. With --visitor: where each of the
    visitor's goals enqueued in the last hour is now."""
    if (event_id is None) == (visitor is None):
        raise click.UsageError("give an EVENT_ID or --visitor, not both")
    if visitor is not None:
        _show_visitor(visitor, as_json)
        return
    assert event_id is not None
    try:
        event_id = canonical_id(event_id)
    except ValueError:
        raise click.BadParameter(f"{event_id!r} is not an event id (a UUID)") from None
    found = read(lambda client, keys: locate(client, keys, event_id))
    if as_json:
        click.echo(json.dumps(found.as_dict()))
    else:
        click.echo("\n".join(_lines(found)))
    if found.state == "unknown":
        raise SystemExit(1)


def _show_visitor(visitor: str, as_json: bool) -> None:
    goals = read(lambda client, keys: visits(client, keys, visitor))
    if as_json:
        listed = [{**found.as_dict(), "enqueued_at": at} for at, found in goals]
        click.echo(json.dumps({"visitor_id": visitor, "goals": listed}))
        return
    if not goals:
        click.echo(f"no goals of visitor {printable(visitor)!r} enqueued in the last hour")
        return
    rows = [
        (found.event_id, _when(at), found.state.replace("_", " "), _when(found.at or found.until),
         found.why or None)
        for at, found in goals
    ]  # fmt: skip
    click.echo("\n".join(table(("event id", "enqueued", "state", "at/until", "why"), rows)))


def _lines(found: Whereabouts) -> list[str]:
    if found.state == "unknown" and not found.attempts:
        return [f"goal {found.event_id} is unknown: never enqueued, or delivered too long ago"]
    event = found.event
    values = {
        "event id": found.event_id,
        "state": found.state.replace("_", " "),
        "since" if found.state in ("delivered", "dead") else "at": _when(found.at),
        "until": _when(found.until),
        "why": found.why or None,
        "worker": found.worker or None,
        "datafast event id": found.remote_id or None,
        "visitor": None if event is None else event.visitor_id,
        "goal": None if event is None else event.name,
        "enqueued": None if event is None else _when(event.enqueued_at),
    }
    lines = figures({name: value for name, value in values.items() if value is not None})
    if found.attempts:
        rows = [
            (_when(a.at), a.worker, a.status or a.error, _ms(a.seconds), a.decision,
             a.why or None, _when(a.until))
            for a in found.attempts
        ]  # fmt: skip
        headers = ("when", "worker", "status", "took", "decided", "why", "until")
        lines += ["", *table(headers, rows)]
    return lines


def _when(at: float | None) -> str | None:
    if at is None:
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))
    return f"{stamp}.{int(at % 1 * 1000):03d}Z"


def _ms(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.0f} ms"
