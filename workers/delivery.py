"""Deliver goals: the path every goal takes on a worker process's event loop, top to bottom.

take them from the ledger   (gone? already delivered? paused? a token to send?)   one TAKE call
POST each to DataFast       (all at once, on the process's one AsyncClient)
classify each answer        (workers.policy)
record the outcome          delivered marker | dead letter | waiting set (+ pause, slower pace)

A task is given one goal and claims more off the queue in the same TAKE call, as many as the
process has room for (``GOALQUEUE_MAX_IN_FLIGHT``) and the shared pace allows. The task returns,
and Celery acks its message, once its own goal is recorded; the claimed goals carry on without
it. They never enter kombu's unacknowledged bookkeeping: if the worker dies, the ledger still
holds them and the reconciler puts them back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import redis.asyncio

from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.scripts import Defer, Standing, Take, Taken, WorkerScripts
from workers.client import answer_class, post_goal
from workers.policy import (
    RETRY_AFTER_MAX_SECONDS,
    Outcome,
    Verdict,
    backoff,
    classify,
    pause_length,
)
from workers.recording import Pause, Record, Recorder, Writer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one queued copy of a goal, and how long it took."""

    event_id: str
    result: str
    seconds: float


class Deliverer:
    """Everything a worker process needs to deliver goals: Redis, HTTP, settings, room.

    All of it runs on one event loop; nothing here is thread-safe, nor needs to be.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.asyncio.Redis,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        announce: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.http = http
        self.scripts = WorkerScripts(client, settings.keys)
        writer = Writer(settings, client, self.scripts, clock, lambda: self.stopping)
        self.recorder = Recorder(writer.write)
        self.clock = clock
        self.rand = rand
        self.announce = announce
        self.held = 0  # goals taken (or being taken) and not yet recorded
        self.stopping = False
        self._claimed: set[asyncio.Task[Delivery]] = set()

    async def deliver(self, event_id: str, seq: int) -> Delivery:
        """Deliver a task's goal, and start on the goals its TAKE claims; returns once the
        task's own goal is recorded (the claimed ones carry on)."""
        started = time.monotonic()
        now, take = await self._take(event_id, seq)
        own, *claimed = take.taken
        for copy in claimed:
            task = asyncio.create_task(self._handle(copy, now, take.wait, started))
            self._claimed.add(task)
            task.add_done_callback(self._claimed_done)
        return await self._handle(own, now, take.wait, started)

    async def settled(self) -> None:
        """Wait until every goal claimed so far is recorded."""
        while self._claimed:
            await asyncio.wait(set(self._claimed))

    async def _take(self, event_id: str, seq: int) -> tuple[float, Take]:
        """TAKE the task's goal and claims: once the pace has a token for it, or, after waiting
        a quarter of the visibility timeout (or when stopping), holding it in the waiting set."""
        patience = time.monotonic() + self.settings.visibility_timeout_seconds / 4
        while True:
            now = self.clock()
            patient = not self.stopping and time.monotonic() < patience
            take = await self._take_once((event_id, seq), now, patient)
            if take.taken:
                return now, take
            await asyncio.sleep(take.wait)

    async def _take_once(self, goal: tuple[str, int], now: float, patient: bool) -> Take:
        # The room is reserved before the call, so that TAKEs running at once share it.
        claim = 0 if self.stopping else max(0, self.settings.max_in_flight - self.held - 1)
        self.held += claim + 1
        try:
            take = await self.scripts.take(
                now,
                goal=goal,
                claim=claim,
                fingerprint=self.settings.key_fingerprint,
                probe_lease_ms=self.settings.probe_lease_ms,
                max_rate=self.settings.max_rate or 0,
                patient=patient,
            )
        finally:
            self.held -= claim + 1
        self.held += len(take.taken)
        return take

    def _claimed_done(self, task: asyncio.Task[Delivery]) -> None:
        self._claimed.discard(task)
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            logger.error("a claimed goal was not recorded (the reconciler re-queues it): %s", exc)
        elif self.announce is not None:
            self.announce(task.result())

    async def _handle(self, copy: Taken, now: float, wait: float, started: float) -> Delivery:
        try:
            record = Record()
            prepared = self._prepare(copy, now, wait, record)
            if isinstance(prepared, GoalEvent):
                result = await self._send(copy, prepared, now, record)
            else:
                result = prepared
            if record.settlement.outcomes:
                await self.recorder.record(record)
        finally:
            self.held -= 1
        return Delivery(copy.event_id, result, time.monotonic() - started)

    def _prepare(self, copy: Taken, now: float, wait: float, record: Record) -> str | GoalEvent:
        """The event to send, or what happened to a copy that needs no request (a held goal is
        due again after TAKE's ``wait``: none while paused, the next token for the pace)."""
        if copy.standing is Standing.GONE:
            return "stale copy"
        settlement = record.settlement
        if copy.standing is Standing.POISON:
            settlement.bury("", DeadLetter.poison(copy.entry, "sequence never handed out"))
            return "poison"
        try:
            event = GoalEvent.from_json(copy.entry)
        except ValueError as exc:
            settlement.bury(copy.entry, DeadLetter.poison(copy.entry, str(exc)))
            return "poison"
        if copy.standing is Standing.DONE:
            settlement.forget(copy.entry)
            return "already delivered"
        if now - event.enqueued_at > self.settings.max_age_seconds:
            settlement.bury(copy.entry, DeadLetter.of(event, "expired"))
            return "expired"
        if copy.standing is Standing.HOLD:
            settlement.park(copy.entry, event, due=now + wait)
            return "held while paused" if wait == 0 else "held for the pace"
        return event

    async def _send(self, copy: Taken, event: GoalEvent, now: float, record: Record) -> str:
        """POST the goal and put its outcome in ``record``."""
        sent = time.monotonic()
        answer = await post_goal(self.http, self.settings.api_url, event)
        record.settlement.answered(answer_class(answer), time.monotonic() - sent)
        answered = self.clock()
        verdict = classify(answer, now=answered, max_wait=RETRY_AFTER_MAX_SECONDS)
        probe = copy.standing is Standing.PROBE
        record.resume = probe and verdict.outcome is not Outcome.DEFERRED
        if verdict.outcome is Outcome.DELIVERED:
            record.settlement.delivered(
                copy.entry, event.event_id, verdict.remote_id or "", answered - event.enqueued_at
            )
            return verdict.outcome.value
        event = event.attempted(now, verdict.status_code, verdict.error)
        return self._settle(record, copy, event, verdict)

    def _settle(self, record: Record, copy: Taken, event: GoalEvent, verdict: Verdict) -> str:
        """Put the outcome of a goal DataFast did not take into ``record``."""
        now = self.clock()
        settlement = record.settlement
        if verdict.outcome is Outcome.PERMANENT:
            settlement.bury(copy.entry, DeadLetter.of(event, verdict.reason or "client_error"))
        elif verdict.outcome is Outcome.DEFERRED:
            record.pause = self._pause(verdict, copy, now)
            settlement.park(copy.entry, event, due=now, outcome=f"deferred:{verdict.reason}")
            return f"deferred ({verdict.reason})"
        else:
            delay = backoff(
                event.attempts,
                base=self.settings.retry_base_seconds,
                cap=self.settings.retry_max_seconds,
                rand=self.rand,
            )
            settlement.park(copy.entry, event, due=now + delay, outcome="transient")
        return verdict.outcome.value

    def _pause(self, verdict: Verdict, copy: Taken, now: float) -> Pause:
        """The pause a deferring answer calls for: Retry-After, or grown from the streak."""
        streak = copy.streak + 1 if copy.standing is Standing.PROBE else 0
        seconds = verdict.retry_after
        if seconds is None:
            settings = self.settings
            seconds = pause_length(
                streak, base=settings.retry_base_seconds, cap=settings.retry_max_seconds
            )
        halve = verdict.status_code == 429
        return Pause(verdict, Defer(now + seconds, verdict.reason or "", streak, halve), seconds)
