"""The operator's pause: ``goalqueue pause [--for 10m] [--reason TEXT]`` and ``goalqueue resume``.

It lives in ``<ns>:operator_pause`` (see :mod:`goalqueue.keys`), apart from DataFast's pauses
(``<ns>:pause``): a DataFast pause ending, or a probe getting through, never ends it, and
``resume`` ends nothing but it. While it is in force every worker's TAKE holds each goal it takes
(``halt``: parked in the waiting set, no request sent) and the sweepers move none back, so no
goal is sent, dropped or dead-lettered.

Max age (``GOALQUEUE_MAX_AGE_SECONDS``) counts only time not paused by hand. The hash keeps the
past pauses by hand that can still matter (``spans``, bounded: see ``lua/hand.lua``), TAKE hands
them to the worker with the goals it takes, and :func:`paused_between` takes them out of a goal's
age (:func:`workers.decide.decide`).
"""

from __future__ import annotations

import getpass
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from goalqueue.scripts import Scripts

Span = tuple[float, float]
_SPAN = re.compile(r"([\d.]+):([\d.]+)")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class HandPause:
    """A pause by hand: since when, until when (None: until resumed), why, set by whom and
    when last set."""

    since: float
    until: float | None
    reason: str
    by: str
    at: float

    @classmethod
    def of(cls, fields: Sequence[Any]) -> HandPause | None:
        """From the hash's since, until, reason, by, at (None when there is no pause)."""
        since, until, reason, by, at = fields
        if since is None:
            return None
        ends = float(until or 0)
        return cls(float(since), ends or None, str(reason or ""), str(by or ""), float(at or 0))

    def in_force(self, now: float) -> bool:
        return self.until is None or now < self.until

    def as_dict(self) -> dict[str, object]:
        return {
            "since": self.since,
            "until": self.until,
            "reason": self.reason,
            "by": self.by,
            "at": self.at,
        }


def spans_of(text: str) -> tuple[Span, ...]:
    """The pauses by hand in TAKE's ``start:end ...``."""
    return tuple((float(start), float(end)) for start, end in _SPAN.findall(text))


def paused_between(spans: Sequence[Span], start: float, end: float) -> float:
    """Seconds of ``[start, end]`` paused by hand."""
    return sum(max(0.0, min(end, stop) - max(start, begin)) for begin, stop in spans)


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``10m``, ``2h``, ``1d``; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m, 2h or 1d")
    return float(match[1]) * _UNITS[match[2]]


def operator() -> str:
    """Who pauses: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def pause(
    scripts: Scripts, now: float, *, until: float | None, reason: str, by: str, max_age: float
) -> tuple[HandPause | None, bool]:
    """Pause by hand until ``until`` (None: until resumed); returns the pause this replaces
    and whether it was in force."""
    return _run(scripts, "pause", now, until or 0, reason, by, max_age)


def resume(scripts: Scripts, now: float, max_age: float) -> tuple[HandPause | None, bool]:
    """End the pause by hand; returns the pause it ended and whether it was in force."""
    return _run(scripts, "resume", now, 0, "", "", max_age)


def _run(
    scripts: Scripts, op: str, now: float, until: float, reason: str, by: str, max_age: float
) -> tuple[HandPause | None, bool]:
    *fields, active = scripts.hand(op, now, until, reason, by, max_age)
    return HandPause.of(fields), bool(active)


def describe(hand: HandPause, now: float) -> str:
    """One line: why, since when, until when, set by whom and when."""
    until = "until `goalqueue resume`"
    if hand.until is not None:
        until = f"until {_clock(hand.until)} (in {_span(max(0.0, hand.until - now))})"
    reason = f"reason {hand.reason!r}" if hand.reason else "no reason given"
    return f"{reason}, since {_clock(hand.since)}, {until}; set by {hand.by} at {_clock(hand.at)}"


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _span(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return " ".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"
