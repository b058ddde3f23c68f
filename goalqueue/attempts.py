"""A goal's attempt log: what each delivery attempt got, and what was decided.

The worker's SETTLE writes an attempt in the same call that records its outcome (see
``lua/settle.lua``), to the list ``<ns>:attempts:<event id>`` (see :mod:`goalqueue.keys`). Only
goals that needed more than one attempt, wait, or died keep one: a goal delivered at its first
attempt (most of them) keeps only its delivered marker (:mod:`goalqueue.markers`).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from goalqueue.event import dumps

KEPT = 10  # attempts a log keeps (lua/settle.lua's ATTEMPTS_KEPT)
ERROR_LIMIT = 120  # characters of an error kept

# decisions
DELIVERED = "delivered"
DEAD = "dead"
WAIT = "wait"
PAUSE = "pause"
HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt (or a decision taken without a request: a hold, an expiry): when, on which
    worker, DataFast's status or what went wrong, how long the request took, the decision (one
    of ``delivered``, ``dead``, ``wait``, ``pause``, ``hold``), why, and until when it waits."""

    at: float
    worker: str
    decision: str
    status: int | None = None
    error: str | None = None
    seconds: float | None = None
    why: str = ""
    until: float | None = None

    def to_json(self) -> str:
        stored: dict[str, Any] = {"t": round(self.at, 3), "w": self.worker, "o": self.decision}
        for wire, value in (
            ("s", self.status),
            ("e", self.error[:ERROR_LIMIT] if self.error else None),
            ("d", None if self.seconds is None else round(self.seconds, 4)),
            ("r", self.why or None),
            ("u", None if self.until is None else round(self.until, 3)),
        ):
            if value is not None:
                stored[wire] = value
        return dumps(stored)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Attempt:
        """Parse a stored attempt; ``ValueError`` if it is not one."""
        try:
            data = json.loads(raw)
            return cls(
                at=float(data["t"]),
                worker=str(data["w"]),
                decision=str(data["o"]),
                status=data.get("s"),
                error=data.get("e"),
                seconds=data.get("d"),
                why=data.get("r") or "",
                until=data.get("u"),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an attempt: {exc}") from exc

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at, "worker": self.worker, "status": self.status, "error": self.error,
            "seconds": self.seconds, "decision": self.decision, "why": self.why,
            "until": self.until,
        }  # fmt: skip


def worker_name() -> str:
    """This process, as attempts name it: ``hostname:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"
