"""The worker's scripts and what they take and give back: TAKE, SETTLE, DEFER on the event
loop's client; SWEEP, RECONCILE (and SETTLE for poison) on a blocking client; kombu's unacked
bookkeeping. The one place that knows each of their keys and arguments (the Lua is in
``goalqueue/lua/``, shared with the producer's scripts through :func:`goalqueue.scripts.source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis import Redis

from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.keys import TASK_NAME, Keys
from goalqueue.message import template
from goalqueue.pausing import Span, spans_of
from goalqueue.scripts import REASONS, ScriptArg, source
from goalqueue.tally import LATENCY_BOUNDS, REQUEST_BOUNDS, bucket, micros

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.client import Pipeline

OUTCOME_FIELDS = 7  # fields per outcome in SETTLE's arguments


class Standing(StrEnum):
    """What TAKE says about one queued copy of a goal (see ``lua/take.lua``)."""

    SEND = "send"
    PROBE = "probe"
    HOLD = "hold"
    HALT = "halt"
    DONE = "done"
    GONE = "gone"
    POISON = "poison"


@dataclass(frozen=True, slots=True)
class GoalCopy:
    """One queued copy of a goal that TAKE took, and its standing (poison: ``entry`` is the
    message to dead-letter, ``seq`` 0)."""

    event_id: str
    seq: int
    standing: Standing
    entry: str
    streak: int


@dataclass(frozen=True, slots=True)
class TakeReply:
    """TAKE's answer: the copies taken, how long any held for the pace wait (seconds), and
    the pauses by hand max age leaves out (see :mod:`goalqueue.pausing`). Nothing taken with a
    wait means no token yet: try again after the wait."""

    wait: float
    copies: list[GoalCopy]
    paused: tuple[Span, ...] = ()


@dataclass(frozen=True, slots=True)
class Defer:
    """A pause for everyone until ``until``; ``halve`` for a 429 or a timeout after sending,
    which also slow the pace."""

    until: float
    reason: str
    streak: int
    halve: bool


class Settlement:
    """Outcomes for one SETTLE call (see ``lua/settle.lua``), and the answers they record,
    added up for ``<ns>:metrics`` (see :mod:`goalqueue.tally`)."""

    def __init__(self) -> None:
        self.outcomes: list[ScriptArg] = []
        self.letters: list[DeadLetter] = []
        self.answers: dict[str, int] = {}

    def delivered(
        self, entry: str, event_id: str, remote_id: str, latency: float, attempt: str = ""
    ) -> None:
        """Delivered ``latency`` seconds after it was enqueued. Each outcome may add an
        ``attempt`` (:class:`goalqueue.attempts.Attempt`, as JSON) to the goal's log."""
        index = bucket(LATENCY_BOUNDS, latency)
        self.outcomes += ["delivered", entry, event_id, remote_id, index, micros(latency), attempt]

    def bury(self, entry: str, letter: DeadLetter, attempt: str = "") -> None:
        self.outcomes += [
            "bury", entry, letter.event_id, letter.to_json(), letter.reason, letter.dead_at,
            attempt,
        ]  # fmt: skip
        self.letters.append(letter)

    def park(
        self, entry: str, event: GoalEvent, due: float, outcome: str = "", attempt: str = ""
    ) -> None:
        """Into the waiting set until ``due``; ``outcome`` is the counter it moves (a
        ``tally`` field: ``transient``, ``deferred:<reason>``), none for a goal held back."""
        self.outcomes += ["park", entry, due, event.to_json(), outcome, event.event_id, attempt]

    def forget(self, entry: str, event_id: str) -> None:
        self.outcomes += ["forget", entry, event_id, "", "", 0, ""]

    def answered(self, answer: str, seconds: float) -> None:
        """DataFast gave ``answer`` (a status class) after ``seconds``."""
        answers = self.answers
        for name, amount in (
            (f"answers:{answer}", 1),
            (f"request:{bucket(REQUEST_BOUNDS, seconds)}", 1),
            ("request:sum_us", micros(seconds)),
        ):
            answers[name] = answers.get(name, 0) + amount

    def entries(self) -> list[ScriptArg]:
        """The ledger entries of the outcomes, in order."""
        return self.outcomes[1::OUTCOME_FIELDS]

    def extend(self, other: Settlement) -> None:
        self.outcomes += other.outcomes
        self.letters += other.letters
        for name, amount in other.answers.items():
            self.answers[name] = self.answers.get(name, 0) + amount


@dataclass(frozen=True, slots=True)
class Bound:
    """What the worker's scripts take from the settings, read once: the key's fingerprint (a
    401 pause names the key it was for), how long a probe may hold the way, the deployment's
    rate cap (0: none), how long a delivered marker lives, and how long an attempt log is
    kept (:func:`log_ttls`)."""

    fingerprint: str
    probe_lease_ms: int
    max_rate: float
    marker_ttl_ms: int
    log_ttls: tuple[int, int]

    @classmethod
    def of(cls, settings: Settings) -> Bound:
        return cls(
            settings.key_fingerprint,
            settings.probe_lease_ms,
            settings.max_rate or 0,
            int(settings.delivered_ttl_seconds * 1000),
            log_ttls(settings),
        )


def log_ttls(settings: Settings) -> tuple[int, int]:
    """How long (ms) an attempt log is kept after its last attempt: a waiting goal's (the
    longer of the markers' lifetime and the goals' maximum age), a dead goal's (the
    dead-letter retention). A delivered goal's lives as long as its marker."""
    live = max(settings.delivered_ttl_seconds, settings.max_age_seconds)
    return int(live * 1000), int(settings.dead_retention_seconds * 1000)


class WorkerScripts:
    """The worker's scripts, on its event loop's client, for the namespace of ``keys``.

    SETTLE and DEFER are queued in a pipeline by SHA, with no ``SCRIPT EXISTS`` first: redis-py
    checks that before every pipeline that holds a ``Script`` object, one more round trip per
    write. A ``NoScriptError`` from such a pipeline (a restarted Redis, a flushed script cache)
    means none of them ran: :meth:`load` them and write again.
    """

    def __init__(self, client: AsyncRedis, keys: Keys, bound: Bound) -> None:
        self.client = client
        self.keys = keys
        self.bound = bound
        self._take = client.register_script(
            source("take", "pace", "pause", "operator", "push", "marker")
        )
        self._defer = client.register_script(source("defer", "pace"))
        self._settle = client.register_script(source("settle", "dead", "marker"))

    async def take(
        self, now: float, *, goal: tuple[str, int] | None, claim: int, patient: bool
    ) -> TakeReply:
        """TAKE the task's ``goal`` (none: claims alone) and up to ``claim`` more."""
        keys, bound = self.keys, self.bound
        reply = await self._take(
            keys=[
                keys.queue, keys.taken, keys.ledger, keys.pause, keys.probe, keys.pace, keys.sent,
                keys.seq, keys.operator_pause,
            ],
            args=[
                now, bound.fingerprint, bound.probe_lease_ms, claim, TASK_NAME,
                keys.delivered, bound.max_rate, int(patient), *(goal or ()),
            ],
        )  # fmt: skip
        copies = [
            GoalCopy(str(event_id), int(seq), Standing(state), entry, int(streak or 0))
            for event_id, seq, state, entry, streak in _groups_of_five(reply[2:])
        ]
        paused = spans_of(reply[1]) if len(reply) > 1 and reply[1] else ()
        return TakeReply(int(reply[0]) / 1000, copies, paused)

    async def load(self) -> None:
        """Load the scripts into Redis's script cache."""
        for script in (self._take, self._defer, self._settle):
            await self.client.script_load(script.script)

    def settle(self, settlement: Settlement, pipe: Pipeline) -> None:
        """Queue SETTLE for ``settlement`` in ``pipe``."""
        bound = self.bound
        keys = _settle_keys(self.keys)
        args = _settle_args(self.keys, settlement, bound.marker_ttl_ms, bound.log_ttls)
        pipe.evalsha(self._settle.sha, len(keys), *keys, *args)

    def defer(self, defer: Defer, now: float, pipe: Pipeline) -> None:
        """Queue DEFER in ``pipe``; its reply is the new pace (goals/s, as text) or None."""
        keys, bound = self.keys, self.bound
        pipe.evalsha(
            self._defer.sha, 4, keys.pause, keys.probe, keys.pace, keys.sent,
            defer.until, defer.reason, defer.streak, bound.fingerprint, now, bound.max_rate,
            int(defer.halve),
        )  # fmt: skip


class SweeperScripts:
    """The sweeper's scripts, on a blocking client: SWEEP, RECONCILE, PRUNE, and SETTLE for the
    poison messages the consumer dead-letters."""

    def __init__(self, client: Redis, keys: Keys) -> None:
        self.keys = keys
        self._template = template(keys)
        self._sweep = client.register_script(source("sweep", "pause", "operator", "push"))
        self._reconcile = client.register_script(source("reconcile", "push"))
        self._settle = client.register_script(source("settle", "dead", "marker"))
        self._prune = client.register_script(source("prune", "dead"))

    def sweep(
        self, now: float, limit: int, fingerprint: str, probe_lease_ms: int, cap: int = 0
    ) -> int:
        """Due goals from the waiting set back onto the queue (with a ``cap``, only until the
        queue holds that many messages); returns how many moved."""
        keys = self.keys
        return int(
            self._sweep(
                keys=[
                    keys.pause,
                    keys.probe,
                    keys.waiting,
                    keys.seq,
                    keys.ledger,
                    keys.queue,
                    keys.operator_pause,
                ],
                args=[self._template, now, limit, fingerprint, probe_lease_ms, cap],
            )
        )

    def reconcile(self, now: float, threshold: float, limit: int, stall: float) -> int:
        """Goals a lost worker took and never settled back onto the queue; returns how many.
        A gap of more than ``stall`` seconds since the last call does not count."""
        keys = self.keys
        return int(
            self._reconcile(
                keys=[
                    keys.taken, keys.checkpoints, keys.seq, keys.ledger, keys.queue,
                    keys.reconciled, keys.unacked_index,
                ],
                args=[self._template, now, threshold, limit, stall],
            )
        )  # fmt: skip

    def prune(self, cutoff: float, keep: int, limit: int) -> tuple[int, int]:
        """Delete at most ``limit`` of the oldest dead letters: those that died before
        ``cutoff``, then those beyond the newest ``keep``; returns how many of each."""
        keys = self.keys
        expired, over = self._prune(
            keys=[keys.dead, keys.metrics], args=[REASONS, cutoff, keep, limit]
        )
        return int(expired), int(over)

    def settle(
        self, settlement: Settlement, marker_ttl_ms: int, log_ttls: tuple[int, int] = (0, 0)
    ) -> int:
        """Record outcomes; returns how many ledger entries this call owned."""
        args = _settle_args(self.keys, settlement, marker_ttl_ms, log_ttls)
        return int(self._settle(keys=_settle_keys(self.keys), args=args))


class UnackedScripts:
    """kombu's bookkeeping of unacknowledged messages (its Redis transport's QoS), as scripts
    Redis still runs at maxmemory, on the channel's client (see workers/transport.py)."""

    def __init__(self, client: Redis, unacked_key: str, index_key: str) -> None:
        self._keys = [unacked_key, index_key]
        self._unacked = client.register_script(source("unacked"))
        self._restore = client.register_script(source("restore"))

    def record(self, tag: ScriptArg, envelope: str, now: float) -> None:
        """Record the message ``envelope`` as unacknowledged under ``tag``."""
        self._unacked(keys=self._keys, args=[tag, envelope, now])

    def restore(
        self, tag: ScriptArg, read: str | bytes, pushes: Sequence[tuple[str, str]], leftmost: bool
    ) -> bool:
        """Push each (queue, message) of ``pushes`` if ``tag`` is still unacknowledged as
        ``read``; returns whether it was."""
        queues = [queue for queue, _ in pushes]
        messages = [message for _, message in pushes]
        restored = self._restore(
            keys=[*self._keys, *queues], args=[tag, read, int(leftmost), *messages]
        )
        return bool(restored)


def _settle_keys(keys: Keys) -> list[str]:
    return [keys.ledger, keys.delivered_count, keys.dead, keys.waiting, keys.metrics, keys.pending]


def _settle_args(
    keys: Keys, settlement: Settlement, marker_ttl_ms: int, log_ttls: tuple[int, int]
) -> list[ScriptArg]:
    answers: list[ScriptArg] = []
    for name, amount in settlement.answers.items():
        answers += [name, amount]
    return [
        marker_ttl_ms, keys.delivered, keys.attempts_prefix, *log_ttls, len(answers), *answers,
        *settlement.outcomes,
    ]  # fmt: skip


def _groups_of_five(fields: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(fields[i : i + 5]) for i in range(0, len(fields), 5)]
