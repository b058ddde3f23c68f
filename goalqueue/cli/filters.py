"""The options of ``goalqueue dead list``, ``replay`` and ``purge`` that select dead letters
(see :mod:`goalqueue.selection`): each bad value a one-line error."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import click

from goalqueue.cli.context import parsed
from goalqueue.selection import DIED, ENQUEUED, Selection, When, status, when
from goalqueue.tally import DEAD_REASONS


def _when(text: str) -> When:
    """``text`` as a time, durations counted back from now."""
    return when(text, time.time())


def filters(command: Callable[..., None]) -> Callable[..., None]:
    """The options that select dead letters, passed to ``command`` as ``selection`` and
    ``limit``."""
    options = [
        click.option("--reason", "reasons", multiple=True, type=click.Choice(DEAD_REASONS),
                     help="Only letters dead for this reason (repeatable: any of them)."),
        click.option("--name", "names", multiple=True,
                     help="Only goals of this name (repeatable)."),
        click.option("--status", "statuses", multiple=True, metavar="STATUS",
                     callback=parsed(status),
                     help="Only letters whose last answer had this status: a code (404), a "
                     "class (4xx), or none (repeatable)."),
        click.option("--since", metavar="WHEN", callback=parsed(_when),
                     help="Only letters that died (see --by) at or after WHEN: 2026-12-01, "
                     "2026-12-01T14:30 (local time unless it has an offset), a unix time, or "
                     "a duration before now (90s, 15m, 2h, 7d, 2w)."),
        click.option("--until", metavar="WHEN", callback=parsed(_when),
                     help="Only letters that died (see --by) at or before WHEN."),
        click.option("--by", type=click.Choice([DIED, ENQUEUED]), default=DIED,
                     show_default=True,
                     help="What --since and --until compare: when the letter died, or when its "
                     "goal was last enqueued."),
        click.option("--limit", type=click.IntRange(min=1), metavar="N",
                     help="At most this many letters, the oldest."),
    ]  # fmt: skip

    @functools.wraps(command)
    def with_selection(
        reasons: tuple[str, ...],
        names: tuple[str, ...],
        statuses: tuple[str, ...],
        since: When | None,
        until: When | None,
        by: str,
        **others: Any,
    ) -> None:
        command(selection=Selection(reasons, names, statuses, since, until, by), **others)

    for option in reversed(options):
        with_selection = option(with_selection)
    return with_selection
