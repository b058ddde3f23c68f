"""The Lua scripts that move a goal between queue, ledger and waiting set atomically, and their
typed wrappers: the one place that knows each script's keys and arguments.

Each script is one Redis call, so many producers and workers can run them at once without a
goal being lost or doubled. Every script that puts a goal on the queue uses ``push`` from
``lua/push.lua``: take the next sequence number, (re)score the goal's ledger entry with it, and
LPUSH the Celery message (see :mod:`goalqueue.message`). The queue is FIFO, so once a worker has
started on sequence N, every goal with a smaller sequence has left the queue: that is what lets
the reconciler find goals lost between kombu's BRPOP and its unacked bookkeeping without
scanning.

The scripts live in ``goalqueue/lua/``, each naming its KEYS and ARGV at the top.
:class:`Scripts` runs the producer's and the sweeper's on a blocking client;
:class:`WorkerScripts` runs the worker's on its event loop's client, alone or in a pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis import Redis

from goalqueue.keys import TASK_NAME, Keys
from goalqueue.message import template
from goalqueue.tally import LATENCY_BOUNDS, REQUEST_BOUNDS, bucket, micros

if TYPE_CHECKING:
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.client import Pipeline

    from goalqueue.deadletters import DeadLetter
    from goalqueue.event import GoalEvent

ScriptArg = str | int | float
OUTCOME_FIELDS = 6  # fields per outcome in SETTLE's arguments


class Standing(StrEnum):
    """What TAKE says about one queued copy of a goal (see ``lua/take.lua``)."""

    SEND = "send"
    PROBE = "probe"
    HOLD = "hold"
    DONE = "done"
    GONE = "gone"
    POISON = "poison"


@dataclass(frozen=True, slots=True)
class Taken:
    """One copy of a goal that TAKE took, and its standing (poison: ``entry`` is the message
    to dead-letter, ``seq`` 0)."""

    event_id: str
    seq: int
    standing: Standing
    entry: str
    streak: int


@dataclass(frozen=True, slots=True)
class Take:
    """TAKE's answer: the copies taken, and how long any held for the pace wait (seconds).
    Nothing taken with a wait means no token yet: try again after the wait."""

    wait: float
    taken: list[Taken]


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

    def delivered(self, entry: str, event_id: str, remote_id: str, latency: float) -> None:
        """Delivered ``latency`` seconds after it was enqueued."""
        index = bucket(LATENCY_BOUNDS, latency)
        self.outcomes += ["delivered", entry, event_id, remote_id, index, micros(latency)]

    def bury(self, entry: str, letter: DeadLetter) -> None:
        self.outcomes += ["bury", entry, letter.event_id, letter.to_json(), letter.reason, 0]
        self.letters.append(letter)

    def park(self, entry: str, event: GoalEvent, due: float, outcome: str = "") -> None:
        """Into the waiting set until ``due``; ``outcome`` is the counter it moves (a
        ``tally`` field: ``transient``, ``deferred:<reason>``), none for a goal held back."""
        self.outcomes += ["park", entry, due, event.to_json(), outcome, 0]

    def forget(self, entry: str, event_id: str) -> None:
        self.outcomes += ["forget", entry, event_id, "", "", 0]

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


class EnqueueScript:
    """ENQUEUE (``lua/enqueue.lua``) for one namespace, as ``EVALSHA`` arguments: the same for
    the blocking and the asyncio producer, sent alone or in a pipeline.

    ``EVALSHA`` goes out bare: redis-py's pipeline would first ask ``SCRIPT EXISTS``, a round
    trip of its own. On ``NOSCRIPT`` (a master promoted by a failover starts with an empty
    script cache) no call ran: load :attr:`source` and send again.
    """

    def __init__(self, keys: Keys) -> None:
        self.source = _source("enqueue", "push")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        keys_and_head: list[ScriptArg] = [
            keys.seq, keys.ledger, keys.queue, keys.pending, keys.dead,
            template(keys), keys.delivered_prefix,
        ]  # fmt: skip
        self.numkeys = 5
        self._head = keys_and_head

    def arguments(self, goals: Sequence[tuple[str, str]]) -> list[ScriptArg]:
        """The keys and arguments after ``EVALSHA sha numkeys`` to enqueue ``(event id,
        payload)`` pairs in one call; its reply is each goal's sequence number, 0 for an event
        id already known."""
        args = list(self._head)
        for event_id, payload in goals:
            args += (event_id, payload)
        return args


class Scripts:
    """The producer's, the CLI's and the sweeper's scripts, on a blocking client, for the
    namespace of ``keys``."""

    def __init__(self, client: Redis, keys: Keys) -> None:
        self.keys = keys
        self._client = client
        self._template = template(keys)
        self._replay = client.register_script(_source("replay", "push"))
        self._sweep = client.register_script(_source("sweep", "pause", "push"))
        self._reconcile = client.register_script(_source("reconcile", "push"))
        self._settle = client.register_script(_source("settle"))
        self._state = client.register_script(_source("state"))

    def replay(self, event_id: str, payload: str) -> int:
        """A dead letter's goal back onto the queue: its new sequence, or 0 if already gone."""
        keys = self.keys
        return int(
            self._replay(
                keys=[keys.dead, keys.seq, keys.ledger, keys.queue, keys.pending],
                args=[self._template, event_id, payload],
            )
        )

    def sweep(
        self, now: float, limit: int, fingerprint: str, probe_lease_ms: int, cap: int = 0
    ) -> int:
        """Due goals from the waiting set back onto the queue (with a ``cap``, only until the
        queue holds that many messages); returns how many moved."""
        keys = self.keys
        return int(
            self._sweep(
                keys=[keys.pause, keys.probe, keys.waiting, keys.seq, keys.ledger, keys.queue],
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

    def settle(self, settlement: Settlement, marker_ttl_ms: int) -> int:
        """Record outcomes; returns how many ledger entries this call owned."""
        args = _settle_args(self.keys, settlement, marker_ttl_ms)
        return int(self._settle(keys=_settle_keys(self.keys), args=args))

    def state(self) -> list[Any]:
        """STATE's reading: queued, waiting, ledger entries, delivered, dead letters, the
        pause's end and reason, the waiting goal due first, the message next in line, the send
        rate (None for what is not there)."""
        keys = self.keys
        state: list[Any] = self._state(
            keys=[
                keys.queue, keys.waiting, keys.ledger, keys.delivered_count, keys.dead,
                keys.pause, keys.pace,
            ]
        )  # fmt: skip
        return state


class UnackedScripts:
    """kombu's bookkeeping of unacknowledged messages (its Redis transport's QoS), as scripts
    Redis still runs at maxmemory, on the channel's client (see workers/transport.py)."""

    def __init__(self, client: Redis, unacked_key: str, index_key: str) -> None:
        self._keys = [unacked_key, index_key]
        self._unacked = client.register_script(_source("unacked"))
        self._restore = client.register_script(_source("restore"))

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


class WorkerScripts:
    """The worker's scripts, on its event loop's client, for the namespace of ``keys``;
    ``pipe=`` queues one in a pipeline."""

    def __init__(self, client: AsyncRedis, keys: Keys) -> None:
        self.keys = keys
        self._take = client.register_script(_source("take", "pace", "pause", "push"))
        self._defer = client.register_script(_source("defer", "pace"))
        self._settle = client.register_script(_source("settle"))

    async def take(
        self,
        now: float,
        *,
        goal: tuple[str, int] | None,
        claim: int,
        fingerprint: str,
        probe_lease_ms: int,
        max_rate: float,
        patient: bool,
    ) -> Take:
        """TAKE the task's ``goal`` (none: claims alone) and up to ``claim`` more."""
        keys = self.keys
        reply = await self._take(
            keys=[
                keys.queue, keys.taken, keys.ledger, keys.pause, keys.probe, keys.pace, keys.sent,
                keys.seq,
            ],
            args=[
                now, fingerprint, probe_lease_ms, claim, TASK_NAME, keys.delivered_prefix,
                max_rate, int(patient), *(goal or ()),
            ],
        )  # fmt: skip
        fields = reply[1:]
        taken = [
            Taken(str(event_id), int(seq), Standing(state), entry, int(streak or 0))
            for event_id, seq, state, entry, streak in _groups_of_five(fields)
        ]
        return Take(int(reply[0]) / 1000, taken)

    async def settle(self, settlement: Settlement, marker_ttl_ms: int, pipe: Pipeline) -> None:
        """Queue SETTLE for ``settlement`` in ``pipe``."""
        args = _settle_args(self.keys, settlement, marker_ttl_ms)
        await self._settle(keys=_settle_keys(self.keys), args=args, client=pipe)

    async def defer(
        self, defer: Defer, *, fingerprint: str, now: float, max_rate: float, pipe: Pipeline
    ) -> None:
        """Queue DEFER in ``pipe``; its reply is the new pace (goals/s, as text) or None."""
        keys = self.keys
        await self._defer(
            keys=[keys.pause, keys.probe, keys.pace, keys.sent],
            args=[
                defer.until, defer.reason, defer.streak, fingerprint, now, max_rate,
                int(defer.halve),
            ],
            client=pipe,
        )  # fmt: skip


def _settle_keys(keys: Keys) -> list[str]:
    return [keys.ledger, keys.delivered_count, keys.dead, keys.waiting, keys.metrics, keys.pending]


def _settle_args(keys: Keys, settlement: Settlement, marker_ttl_ms: int) -> list[ScriptArg]:
    answers: list[ScriptArg] = []
    for name, amount in settlement.answers.items():
        answers += [name, amount]
    return [marker_ttl_ms, keys.delivered_prefix, len(answers), *answers, *settlement.outcomes]


def _groups_of_five(fields: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(fields[i : i + 5]) for i in range(0, len(fields), 5)]


@cache
def _source(name: str, *libraries: str) -> str:
    """A script's source: its ``#!lua`` line (its flags), the shared functions it uses
    (``lua/<library>.lua``), then its own code. Redis reads flags only on the first line."""
    lua = files("goalqueue") / "lua"
    own = (lua / f"{name}.lua").read_text()
    shebang, newline, code = own.partition("\n") if own.startswith("#!") else ("", "", own)
    shared = "".join((lua / f"{library}.lua").read_text() for library in libraries)
    return shebang + newline + shared + code
