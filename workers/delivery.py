"""Deliver goals: the path a worker runs for every task, top to bottom.

take them from the ledger   (gone? already delivered? paused?)   one TAKE call for the batch
POST each to DataFast       (concurrently when given an executor)
classify each answer        (workers.policy)
settle them                 delivered marker | dead letter | waiting set (+ pause)

A task is given one goal, and may claim more off the queue in the same TAKE call (see
:mod:`workers.batch`). Answers are settled in groups, as they arrive: whatever has come back
while the previous group was being recorded goes into the next SETTLE call. A goal DataFast
has accepted is recorded within about one Redis round trip, not after the slowest request of
its batch: a worker killed in between would send it again (see :class:`GroupCommit`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, wait
from dataclasses import dataclass
from typing import Any

import redis

from goalqueue import keys
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.scripts import ScriptArg, Scripts
from workers.client import Answer, Sender
from workers.policy import (
    RETRY_AFTER_MAX_SECONDS,
    Outcome,
    Verdict,
    backoff,
    classify,
    pause_length,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Taken:
    """What TAKE said about one queued copy of a goal (see :data:`goalqueue.scripts.TAKE`)."""

    event_id: str
    seq: int
    verdict: str
    entry: str
    streak: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one queued copy of a goal, and how long it took."""

    event_id: str
    result: str
    seconds: float


class Settlement:
    """Outcomes to record in one SETTLE call."""

    def __init__(self) -> None:
        self.args: list[ScriptArg] = []
        self.letters: list[DeadLetter] = []

    def delivered(self, entry: str, event_id: str, remote_id: str) -> None:
        self.args += ["delivered", entry, event_id, remote_id]

    def bury(self, entry: str, letter: DeadLetter) -> None:
        self.args += ["bury", entry, letter.event_id, letter.to_json()]
        self.letters.append(letter)

    def park(self, entry: str, event: GoalEvent, due: float) -> None:
        self.args += ["park", entry, due, event.to_json()]

    def forget(self, entry: str) -> None:
        self.args += ["forget", entry, "", ""]

    def script_args(self, delivered_ttl_ms: int) -> list[ScriptArg]:
        """SETTLE's ARGV (see :data:`goalqueue.scripts.SETTLE`): its header, then the outcomes."""
        return [delivered_ttl_ms, keys.DELIVERED_PREFIX, *self.args]


class GroupCommit:
    """Records answers in groups, on the thread that brings one.

    A thread with an answer adds it and, unless another thread is already recording, records
    every answer waiting, again and again until none is left. Answers that arrive during a
    SETTLE call share the next one, and none waits for a particular thread to be scheduled:
    under a saturated CPU and GIL, handing answers to one coordinating thread delayed their
    recording by hundreds of milliseconds, and a worker killed meanwhile sent them again.
    """

    def __init__(self, record: Callable[[list[tuple[int, Answer]]], None]) -> None:
        self._record = record
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, Answer]] = []
        self._recording = False

    def add(self, position: int, answer: Answer) -> None:
        with self._lock:
            self._waiting.append((position, answer))
        self.finish()

    def finish(self) -> None:
        """Record every answer waiting, unless another thread is already doing so (raising if
        the recording fails: what it could not record stays waiting for the next call)."""
        with self._lock:
            if self._recording:
                return
            self._recording = True
        self._drain()

    def _drain(self) -> None:
        while True:
            with self._lock:
                group, self._waiting = self._waiting, []
                if not group:
                    self._recording = False
                    return
            try:
                self._record(group)
            except BaseException:
                with self._lock:
                    self._waiting[:0] = group
                    self._recording = False
                raise


class Deliverer:
    """Everything a worker process needs to deliver goals: Redis, HTTP, settings."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        sender: Sender,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.scripts = Scripts(client)
        self.sender = sender
        self.clock = clock
        self.rand = rand

    def deliver(self, event_id: str, seq: int) -> str:
        """Process one queued copy of a goal; returns what happened, for the task's result."""
        return self.deliver_batch([(event_id, seq)])[0].result

    def deliver_batch(
        self, goals: Sequence[tuple[str, int]], *, claim: int = 0, executor: Executor | None = None
    ) -> list[Delivery]:
        """Process ``goals`` (event id, seq) and up to ``claim`` more claimed off the queue.

        With an ``executor`` the POSTs run concurrently on it. Returns one :class:`Delivery`
        per goal, ``goals`` first, then the claimed ones.
        """
        started = time.monotonic()
        now = self.clock()
        taken = self._take(goals, claim, now)
        results: dict[int, str] = {}
        sending: list[tuple[int, GoalEvent]] = []
        settlement = Settlement()
        for index, copy in enumerate(taken):
            prepared = self._prepare(copy, now, settlement)
            if isinstance(prepared, GoalEvent):
                sending.append((index, prepared))
            else:
                results[index] = prepared
        self._write(settlement)
        seconds = {index: time.monotonic() - started for index in results}

        def record(group: list[tuple[int, Answer]]) -> None:
            settlement = Settlement()
            resumed = False
            for position, answer in group:
                index, event = sending[position]
                copy = taken[index]
                verdict = classify(answer, now=self.clock(), max_wait=RETRY_AFTER_MAX_SECONDS)
                event = event.attempted(now, verdict.status_code, verdict.error)
                results[index] = self._settle(settlement, copy, event, verdict)
                resumed |= copy.verdict == "probe" and verdict.outcome is not Outcome.DEFERRED
            self._write(settlement)
            seconds.update(
                (sending[position][0], time.monotonic() - started) for position, _ in group
            )
            if resumed:
                self.redis.delete(keys.PAUSE, keys.PROBE)
                logger.warning("DataFast accepts goals again: delivery resumed")

        self._post(sending, GroupCommit(record), executor)
        return [
            Delivery(copy.event_id, results[index], seconds[index])
            for index, copy in enumerate(taken)
        ]

    def _take(self, goals: Sequence[tuple[str, int]], claim: int, now: float) -> list[Taken]:
        args: list[ScriptArg] = [
            now,
            self.settings.key_fingerprint,
            self.settings.probe_lease_ms,
            claim,
            keys.TASK_NAME,
            keys.DELIVERED_PREFIX,
        ]
        for event_id, seq in goals:
            args += [event_id, seq]
        flat: list[Any] = self.scripts.take(args)
        return [
            Taken(str(flat[i]), int(flat[i + 1]), flat[i + 2], flat[i + 3], int(flat[i + 4] or 0))
            for i in range(0, len(flat), 5)
        ]

    def _prepare(self, copy: Taken, now: float, settlement: Settlement) -> str | GoalEvent:
        """The event to send, or what happened to a copy that needs no request."""
        if copy.verdict == "gone":
            return "stale copy"
        try:
            event = GoalEvent.from_json(copy.entry)
        except ValueError as exc:
            settlement.bury(copy.entry, DeadLetter.poison(copy.entry, str(exc)))
            return "poison"
        if copy.verdict == "done":
            settlement.forget(copy.entry)
            return "already delivered"
        if now - event.enqueued_at > self.settings.max_age_seconds:
            settlement.bury(copy.entry, DeadLetter.of(event, "expired"))
            return "expired"
        if copy.verdict == "hold":
            settlement.park(copy.entry, event, due=now)
            return "held while paused"
        return event

    def _post(
        self, sending: list[tuple[int, GoalEvent]], answers: GroupCommit, executor: Executor | None
    ) -> None:
        """POST every goal, each answer recorded by the thread that receives it."""
        post = self.sender.post

        def send(position: int, event: GoalEvent) -> None:
            answers.add(position, post(event))

        if executor is None or len(sending) < 2:
            for position, (_, event) in enumerate(sending):
                send(position, event)
            return
        futures = [executor.submit(send, i, event) for i, (_, event) in enumerate(sending)]
        wait(futures)
        answers.finish()
        for future in futures:
            future.result()

    def _settle(
        self, settlement: Settlement, copy: Taken, event: GoalEvent, verdict: Verdict
    ) -> str:
        now = self.clock()
        if verdict.outcome is Outcome.DELIVERED:
            settlement.delivered(copy.entry, event.event_id, verdict.remote_id or "")
        elif verdict.outcome is Outcome.PERMANENT:
            settlement.bury(copy.entry, DeadLetter.of(event, verdict.reason or "client_error"))
        elif verdict.outcome is Outcome.DEFERRED:
            probe = copy.verdict == "probe"
            self._pause(verdict, now=now, streak=copy.streak + 1 if probe else 0)
            settlement.park(copy.entry, event, due=now)
            return f"deferred ({verdict.reason})"
        else:
            delay = backoff(
                event.attempts,
                base=self.settings.retry_base_seconds,
                cap=self.settings.retry_max_seconds,
                rand=self.rand,
            )
            settlement.park(copy.entry, event, due=now + delay)
        return verdict.outcome.value

    def _pause(self, verdict: Verdict, *, now: float, streak: int) -> None:
        """Pause delivery for every worker until ``until``; the next probe tests the API."""
        length = verdict.retry_after
        if length is None:
            length = pause_length(
                streak, base=self.settings.retry_base_seconds, cap=self.settings.retry_max_seconds
            )
        until = now + length
        with self.redis.pipeline() as pipe:
            pipe.hset(
                keys.PAUSE,
                mapping={
                    "until": until,
                    "reason": verdict.reason or "",
                    "streak": streak,
                    "key": self.settings.key_fingerprint,
                },
            )
            pipe.delete(keys.PROBE)
            pipe.execute()
        if verdict.reason == "auth":
            logger.error(
                "DataFast rejected the API key (401: %s). Delivery is paused and no goal is "
                "dropped; set a valid DATAFAST_API_KEY and restart the workers to resume.",
                verdict.error,
            )
        else:
            logger.warning(
                "DataFast answered %s (%s): delivery paused for %.1f s",
                verdict.status_code,
                verdict.reason,
                length,
            )

    def _write(self, settlement: Settlement) -> None:
        """Record outcomes, waiting out a short Redis outage.

        DataFast may already have answered: giving up here means the goal is sent again, so
        keep trying for half the visibility timeout (after that the reconciler re-queues it).
        SETTLE is safe to repeat: a copy that no longer owns its entry changes nothing.
        """
        if not settlement.args:
            return
        args = settlement.script_args(int(self.settings.delivered_ttl_seconds * 1000))
        deadline = time.monotonic() + self.settings.visibility_timeout_seconds / 2
        while True:
            try:
                self.scripts.settle(args)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                logger.warning("could not record goals' outcomes yet (%s): retrying", exc)
                time.sleep(0.25)
        for letter in settlement.letters:
            logger.warning(
                "goal %s dead-lettered: %s (status %s) %r",
                letter.event_id,
                letter.reason,
                letter.status_code,
                letter.error or "",
            )
