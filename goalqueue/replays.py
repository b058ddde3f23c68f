"""A ``goalqueue dead replay`` by filters that an interruption does not spoil: run again with the
same filters, it goes on where it stopped and replays no letter twice.

A replayed letter leaves the dead letters in the call that queues its goal again (REPLAY), so a
run that starts over never meets it again while its goal is pending or delivered, whatever
stopped the run before (Ctrl-C, a dropped connection, ``--limit``). The one way it could meet it
is as a new letter: the goal dead again since. So the first run keeps, in Redis, when it began
and the times its filters stood for (``2h`` means the same two hours on every run), and a run
with the same filters reads only letters that died before that; the record goes once a run has
read every letter it selects, and lapses after :data:`KEPT_SECONDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import redis

from goalqueue.keys import Keys
from goalqueue.selection import Selection, When

KEPT_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ReplayRun:
    """One replay by filters: what it selects (``died_by`` when it began), and how many
    letters earlier runs replayed."""

    selection: Selection
    started: float
    replayed: int
    resumed: bool
    key: str

    @classmethod
    def find(cls, client: redis.Redis, keys: Keys, selection: Selection, now: float) -> ReplayRun:
        """The run of ``selection``'s filters begun before, or a new one beginning ``now``
        (not recorded until :meth:`begin`)."""
        key = keys.replaying(selection.fingerprint())
        stored = {str(name): str(value) for name, value in client.hgetall(key).items()}
        if not stored:
            return cls(replace(selection, died_by=now), now, 0, False, key)
        started = float(stored["started"])
        selection = replace(
            selection,
            since=_when(selection.since, stored.get("since", "")),
            until=_when(selection.until, stored.get("until", "")),
            died_by=started,
        )
        return cls(selection, started, int(stored.get("replayed", 0)), True, key)

    def begin(self, client: redis.Redis) -> None:
        """Record the run, so that an interrupted one is resumed."""
        selection = self.selection
        client.hset(
            self.key,
            mapping={
                "started": repr(self.started),
                "since": repr(selection.since.at) if selection.since else "",
                "until": repr(selection.until.at) if selection.until else "",
            },
        )
        client.expire(self.key, KEPT_SECONDS)

    def replayed_more(self, client: redis.Redis, count: int) -> None:
        client.hincrby(self.key, "replayed", count)

    def end(self, client: redis.Redis) -> None:
        """Forget the run: it read every letter it selects."""
        client.delete(self.key)


def _when(written: When | None, stored: str) -> When | None:
    """The time the first run read ``written`` as."""
    return When(written.text, float(stored)) if written and stored else written
