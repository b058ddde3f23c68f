"""``goalqueue show``: where one goal is now, and its attempts (see goalqueue/whereabouts.py)."""

from __future__ import annotations

import json
import time

import click

from goalqueue.cli.context import read
from goalqueue.terminal import figures, table
from goalqueue.whereabouts import Whereabouts, canonical_id, locate


@click.command()
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(event_id: str, as_json: bool) -> None:
    """Where the goal EVENT_ID is now (queued, in flight, waiting, delivered, dead), and its
    attempts; exits 1 if the queue knows nothing of it."""
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
