"""Which dead letters a ``goalqueue dead`` command acts on: its filters, and the part of the
reasons' indexes (event ids by when they died, see :mod:`goalqueue.keys`) they read.

A letter is selected when it matches every filter given: one of the reasons, one of the goal
names, one of the statuses (a code such as ``404``, a class such as ``4xx``, or ``none`` for no
answer), and a time from ``since`` to ``until`` (both included) when it died or, ``by``
``enqueued``, when its goal was last enqueued. A time is a date or a date and time (ISO 8601,
local time unless it has an offset), a unix timestamp in seconds, or a duration before now
(``90s``, ``15m``, ``2h``, ``7d``, ``2w``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from goalqueue.deadletters import DeadLetter
from goalqueue.tally import LETTER_REASONS

DIED = "died"
ENQUEUED = "enqueued"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_TIMESTAMP = re.compile(r"\d{9,}(?:\.\d+)?")
_STATUS = re.compile(r"[1-5](?:\d\d|xx)|none")


class When(NamedTuple):
    """A time as the operator wrote it, and the unix time it stood for when first read."""

    text: str
    at: float


def when(text: str, now: float) -> When:
    """``text`` read as a time (see the module's doc); ``ValueError`` says why it is not one."""
    value = text.strip()
    if duration := _DURATION.fullmatch(value):
        return When(text, now - float(duration.group(1)) * UNITS[duration.group(2)])
    if _TIMESTAMP.fullmatch(value):
        return When(text, float(value))
    try:
        return When(text, datetime.fromisoformat(value).timestamp())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give a date (2026-12-01), a date and time "
            "(2026-12-01T14:30, local time unless it has an offset), a unix timestamp in "
            "seconds, or a duration before now (90s, 15m, 2h, 7d, 2w)"
        ) from None


def status(text: str) -> str:
    """``text`` as a status filter: a code (``404``), a class (``4xx``) or ``none``."""
    value = text.strip().lower()
    if not _STATUS.fullmatch(value):
        raise ValueError(f"{text!r} is not a status: give a code (404), a class (4xx) or none")
    return value


@dataclass(frozen=True)
class Selection:
    """Filters over dead letters; empty, every letter. ``died_by`` bounds when a letter died
    whatever ``by`` says: a resumed replay leaves out the letters that died since it began."""

    reasons: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    since: When | None = None
    until: When | None = None
    by: str = DIED
    died_by: float | None = None

    @property
    def filtered(self) -> bool:
        """Whether any filter is given."""
        return bool(self.reasons or self.names or self.statuses or self.since or self.until)

    @property
    def indexes(self) -> tuple[str, ...]:
        """The reasons whose indexes hold the letters: the filter's, or every one (with the
        corrupt letters')."""
        return self.reasons or LETTER_REASONS

    def window(self) -> tuple[float, float]:
        """The times of death the letters may have, as index scores (both included)."""
        low, high = float("-inf"), float("inf")
        if self.by == DIED:
            low = self.since.at if self.since else low
            high = self.until.at if self.until else high
        if self.died_by is not None:
            high = min(high, self.died_by)
        return low, high

    def matches(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` passes every filter (its reason is its index's)."""
        event = letter.event
        if self.names and (event is None or event.name not in self.names):
            return False
        if self.statuses and not any(_status_is(letter.status_code, s) for s in self.statuses):
            return False
        if self.by == ENQUEUED and (self.since or self.until):
            if event is None:
                return False
            since = self.since.at if self.since else float("-inf")
            until = self.until.at if self.until else float("inf")
            return since <= event.enqueued_at <= until
        return True

    def fingerprint(self) -> str:
        """The same for the same filters as written (relative times as such), whatever
        ``died_by`` says: what a replay is resumed by."""
        written = {
            "reasons": sorted(self.reasons),
            "names": sorted(self.names),
            "statuses": sorted(self.statuses),
            "since": self.since.text if self.since else None,
            "until": self.until.text if self.until else None,
            "by": self.by,
        }
        return hashlib.sha256(json.dumps(written, sort_keys=True).encode()).hexdigest()[:16]


def _status_is(code: int | None, wanted: str) -> bool:
    if code is None:
        return wanted == "none"
    text = str(code)
    return wanted == text or (wanted.endswith("xx") and wanted[0] == text[0] and len(text) == 3)
