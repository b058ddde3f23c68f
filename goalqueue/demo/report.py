"""What the demo shows: one live progress line, then a table of what happened to each goal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import click
import redis

from goalqueue.deadletters import DeadLetters
from goalqueue.demo.brokers import DEMO_KEYS
from goalqueue.sandbox import Sandbox
from goalqueue.stats import collect
from goalqueue.terminal import table

CLEAR_LINE = "\x1b[K"


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Snapshot:
    """Where the goals are, from Redis, and what the sandbox has answered so far."""

    delivered: int
    dead: int
    waiting: int
    queued: int
    in_flight: int
    paused: str | None
    answers: Mapping[int, int]

    @classmethod
    def read(cls, client: redis.Redis, sandbox: Sandbox) -> Snapshot:
        figures = collect(client, DEMO_KEYS)
        return cls(
            delivered=figures["delivered"],
            dead=figures["dead"],
            waiting=figures["waiting"],
            queued=figures["queued"],
            in_flight=figures["in_flight"],
            paused=_paused(figures),
            answers=sandbox.stats().by_status,
        )

    def settled(self, sent: int) -> bool:
        """Every goal sent is delivered or dead, and nothing is left anywhere."""
        idle = self.queued == self.waiting == self.in_flight == 0
        return idle and self.delivered + self.dead >= sent

    def line(self, sent: int, elapsed: float) -> str:
        answers = " ".join(f"{status}x{n}" for status, n in sorted(self.answers.items()))
        pause = f" | paused ({self.paused})" if self.paused else ""
        return (
            f"{elapsed:5.1f} s  sent {sent}  delivered {self.delivered}  dead {self.dead}  "
            f"waiting {self.waiting}  queued {self.queued}  in flight {self.in_flight}"
            f" | sandbox answered {answers or '-'}{pause}"
        )


def _paused(figures: Mapping[str, object]) -> str | None:
    """Why delivery is paused now: by hand, by DataFast's answer, or both; None if it runs."""
    until = figures["paused_until"]
    datafast = figures["pause_reason"] if isinstance(until, float) and until > time.time() else None
    reasons = ["by hand"] if figures["paused_by_hand"] else []
    reasons += [str(datafast)] if datafast else []
    return ", ".join(reasons) or None


class Progress:
    """One status line: redrawn in place on a terminal, printed once a second elsewhere."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._drawn = False
        self._next_line = 0.0

    def show(self, line: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            click.echo(f"\r{line[:width]}{CLEAR_LINE}", nl=False)
            self._drawn = True
        elif time.monotonic() >= self._next_line:
            click.echo(line)
            self._next_line = time.monotonic() + 1

    def note(self, message: str) -> None:
        """A line of its own, above the status line."""
        if self._drawn:
            click.echo(f"\r{CLEAR_LINE}", nl=False)
            self._drawn = False
        click.echo(message)

    def finish(self, line: str) -> None:
        self._next_line = 0.0
        self.show(line)
        if self.tty:
            click.echo()
        self._drawn = False


# --------------------------------------------------------------------------- the outcome


@dataclass
class Sent:
    """The event ids of every goal the demo enqueued, by kind."""

    valid: list[str] = field(default_factory=list)
    bot: str | None = None
    unknown: str | None = None

    @property
    def count(self) -> int:
        return len(self.valid) + (self.bot is not None) + (self.unknown is not None)


@dataclass(frozen=True)
class Row:
    kind: str
    sent: int
    delivered: int
    dead: int
    requests: int


def answers_by_goal(sandbox: Sandbox) -> dict[str, list[int]]:
    """Every status the sandbox answered, per goal (its Idempotency-Key is the event id)."""
    answers: dict[str, list[int]] = {}
    for event in sandbox.events():
        if event.idempotency_key is not None:
            answers.setdefault(event.idempotency_key, []).append(event.status)
    return answers


def dead_statuses(client: redis.Redis) -> dict[str, int | None]:
    """The HTTP status of each dead letter, by event id."""
    return {letter.event_id: letter.status_code for letter in DeadLetters(client, DEMO_KEYS)}


def table_rows(
    sent: Sent, answers: Mapping[str, Sequence[int]], dead: Mapping[str, int | None]
) -> list[Row]:
    """What happened to each kind of goal; "requests" counts every POST the sandbox received."""
    met = {status: [i for i in sent.valid if status in answers.get(i, ())] for status in (429, 503)}
    kinds = [
        ("valid", sent.valid),
        ("  of which met a 429", met[429]),
        ("  of which met a 503", met[503]),
        ("bot visitor (400)", [sent.bot] if sent.bot else []),
        ("unknown visitor (404)", [sent.unknown] if sent.unknown else []),
    ]
    return [
        Row(
            kind=kind,
            sent=len(ids),
            delivered=sum(200 in answers.get(i, ()) for i in ids),
            dead=sum(i in dead for i in ids),
            requests=sum(len(answers.get(i, ())) for i in ids),
        )
        for kind, ids in kinds
    ]


def problems(
    sent: Sent, answers: Mapping[str, Sequence[int]], dead: Mapping[str, int | None]
) -> list[str]:
    """Why the run failed: valid goals not delivered, permanent failures not dead letters."""
    found = []
    missing = [i for i in sent.valid if 200 not in answers.get(i, ())]
    if missing:
        found.append(f"{len(missing)} of {len(sent.valid)} valid goals were not delivered")
    for event_id, status, who in (
        (sent.bot, 400, "the bot visitor's goal"),
        (sent.unknown, 404, "the unknown visitor's goal"),
    ):
        if event_id is None or dead.get(event_id, 0) != status:
            found.append(f"{who} is not a dead letter with status {status}")
    return found


def render_table(rows: Sequence[Row]) -> list[str]:
    headers = ("kind of goal", "sent", "delivered", "dead-lettered", "requests")
    return table(headers, [(r.kind, r.sent, r.delivered, r.dead, r.requests) for r in rows])


def print_outcome(sent: Sent, sandbox: Sandbox, client: redis.Redis, elapsed: float) -> list[str]:
    """Print the table and the duplicates; returns the problems (none: success)."""
    answers = answers_by_goal(sandbox)
    dead = dead_statuses(client)
    click.echo(f"\nWhat happened to each kind of goal, in {elapsed:.1f} s:\n")
    for line in render_table(table_rows(sent, answers, dead)):
        click.echo(f"  {line}")
    click.echo(f"\n  delivered more than once: {sandbox.stats().duplicates}")
    return problems(sent, answers, dead)
