"""Deliver goals: the path every goal takes on a worker process's event loop, top to bottom.

take them from the ledger   (gone? already delivered? paused? a token to send?)   one TAKE call
POST each to DataFast       (all at once, on the process's one AsyncClient)
classify each answer        (workers.policy)
record the outcome          delivered marker | dead letter | waiting set (+ pause, slower pace)

A task is given one goal and claims more off the queue in the same TAKE call, as many as the
process has room for (``GOALQUEUE_MAX_IN_FLIGHT`` requests) and the shared pace allows; as room
frees up, the loop claims more by itself (``REFILL``), so the requests in flight do not wait for
Celery to bring the next message. The task returns, and Celery acks its message, once its own
goal is recorded; the claimed goals carry on without it. They never enter kombu's
unacknowledged bookkeeping: if the worker dies, the ledger still holds them and the reconciler
puts them back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import redis
import redis.asyncio

from goalqueue.attempts import worker_name
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from workers.client import GoalPoster
from workers.decide import Act, Decision, Rules, decide
from workers.outage import Outage
from workers.policy import RETRY_AFTER_MAX_SECONDS, Verdict, classify
from workers.recording import Record, Recorder, Writer, attempt_of
from workers.scripts import Bound, GoalCopy, Standing, TakeReply, WorkerScripts

logger = logging.getLogger(__name__)

# Room is counted from TAKE until DataFast answers (a goal waiting for its outcome to be written
# holds no request); up to a quarter of GOALQUEUE_MAX_IN_FLIGHT may wait for their writes before
# claiming stops. Queued goals are claimed again, alone, once this much room has freed up ...
REFILL = 32
# ... unless the last claim found the queue empty, or delivery held, this long ago.
DRY_SECONDS = 0.05
_HELD = (Standing.HOLD, Standing.HALT)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one queued copy of a goal (and why), and how long it took."""

    event_id: str
    result: Act
    why: str
    seconds: float

    @property
    def summary(self) -> str:
        """What Flower shows as the task's result: ``delivered``, ``dead (bad_request)``,
        ``waiting (rate_limited)``, ``held (pace)`` ..."""
        return _summary(self.result, self.why)


def _summary(act: Act, why: str) -> str:
    """An outcome in words: ``delivered``, ``dead (bad_request)`` ..."""
    return f"{act} ({why})" if why else str(act)


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
        outage: Outage | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.poster = GoalPoster(http, settings)
        self.scripts = WorkerScripts(client, settings.keys, Bound.of(settings))
        self.writer = Writer(settings, client, self.scripts, clock, outage)
        self.recorder = Recorder(self.writer.write)
        self.rules = Rules.of(settings)
        self.clock = clock
        self.rand = rand
        self.announce = announce
        self.name = worker_name()  # this process, as attempt logs name it
        self.in_flight = 0  # goals taken (or being taken) that DataFast has not answered yet
        self.stopping = False
        self.unrecorded = 0  # goals answered, their outcome not recorded yet
        self._refilling: asyncio.Task[None] | None = None
        self._dry = 0.0  # no claim alone before this (monotonic): the queue was empty or paused
        self._claimed: set[asyncio.Task[Delivery]] = set()

    async def task(self, event_id: str, seq: int) -> Delivery:
        """Deliver a task's goal, and start on the goals its TAKE claims; returns once the
        task's own goal is recorded (the claimed ones carry on)."""
        started = time.monotonic()
        now, take = await self._take(event_id, seq)
        own, *claimed = take.copies
        self._start(claimed, now, take, started)
        return await self._handle(own, now, take, started)

    def _start(self, claimed: list[GoalCopy], now: float, take: TakeReply, started: float) -> None:
        for copy in claimed:
            task = asyncio.create_task(self._handle(copy, now, take, started))
            self._claimed.add(task)
            task.add_done_callback(self._claimed_done)

    def _refill_soon(self) -> None:
        """Claim queued goals again, alone, once ``REFILL`` goals' room has freed up, rather
        than wait for a task to bring a message: the process keeps its requests in flight."""
        if (
            self.stopping
            or self._refilling is not None
            or self.settings.max_in_flight - self.in_flight < REFILL
            or self.unrecorded >= self.settings.max_in_flight // 4
            or time.monotonic() < self._dry
        ):
            return
        self._refilling = asyncio.create_task(self._refill())

    async def _refill(self) -> None:
        try:
            while not self.stopping and self.settings.max_in_flight - self.in_flight >= REFILL:
                started, now = time.monotonic(), self.clock()
                take = await self._take_once(None, now, patient=False)
                self._start(take.copies, now, take, started)
                if not take.copies or any(t.standing in _HELD for t in take.copies):
                    self._dry = time.monotonic() + DRY_SECONDS  # empty, paused or paced
                    return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.writer.outage.failed("claiming goals", exc)
            self._dry = time.monotonic() + DRY_SECONDS
        finally:
            self._refilling = None

    async def settled(self) -> None:
        """Wait until every goal claimed so far is recorded."""
        while self._claimed or self._refilling is not None:
            await asyncio.wait({*self._claimed, *filter(None, [self._refilling])})

    async def _take(self, event_id: str, seq: int) -> tuple[float, TakeReply]:
        """TAKE the task's goal and claims: once the pace has a token for it, or, after waiting
        a quarter of the visibility timeout (or when stopping), holding it in the waiting set."""
        patience = time.monotonic() + self.settings.visibility_timeout_seconds / 4
        while True:
            now = self.clock()
            patient = not self.stopping and time.monotonic() < patience
            take = await self._take_once((event_id, seq), now, patient)
            if take.copies:
                return now, take
            await asyncio.sleep(take.wait)

    async def _take_once(
        self, goal: tuple[str, int] | None, now: float, patient: bool
    ) -> TakeReply:
        # The room is reserved before the call, so that TAKEs running at once share it.
        own = 0 if goal is None else 1
        claim = 0 if self.stopping else max(0, self.settings.max_in_flight - self.in_flight - own)
        self.in_flight += claim + own
        try:
            take = await self.scripts.take(now, goal=goal, claim=claim, patient=patient)
        finally:
            self.in_flight -= claim + own
        self.in_flight += len(take.copies)
        return take

    def _claimed_done(self, task: asyncio.Task[Delivery]) -> None:
        self._claimed.discard(task)
        if task.cancelled():
            return
        if isinstance(exc := task.exception(), (redis.ConnectionError, redis.TimeoutError)):
            self.writer.outage.unrecorded(exc)
        elif exc is not None:
            logger.error("a claimed goal was not recorded (the reconciler re-queues it): %s", exc)
        elif self.announce is not None:
            self.announce(task.result())

    async def _handle(
        self, goal: GoalCopy, now: float, take: TakeReply, started: float
    ) -> Delivery:
        """Decide (on what TAKE said of it), send if so decided, decide on the answer, record:
        one goal, top to bottom. Its room in flight is freed once DataFast has answered, not
        once the answer is written (see ``REFILL``)."""
        in_flight = True
        try:
            decision = decide(goal, None, now, self.rules, wait=take.wait, paused=take.paused)
            answered, verdict, status, took = None, None, None, None
            if decision.act is Act.SEND:
                assert decision.event is not None
                verdict, took = await self._ask(decision.event)
                in_flight = False
                self.in_flight, self.unrecorded = self.in_flight - 1, self.unrecorded + 1
                self._refill_soon()
                answered, status, now = (verdict.answer, took), verdict.status_code, self.clock()
                decision = decide(goal, verdict, now, self.rules,
                                  jitter=self.rand(), sent=decision.event)  # fmt: skip
            if decision.act is not Act.DROP:
                attempt = attempt_of(decision, status, took, self.name, now)
                await self.recorder.record(Record.of(goal, decision, answered, attempt))
            _log_outcome(goal.event_id, decision, verdict, answered)
        finally:
            if in_flight:
                self.in_flight -= 1
            else:
                self.unrecorded -= 1
            self._refill_soon()
        return Delivery(goal.event_id, decision.act, decision.why, time.monotonic() - started)

    async def _ask(self, event: GoalEvent) -> tuple[Verdict, float]:
        """POST the goal: what DataFast's answer means, and how long it took."""
        sent = time.monotonic()
        answer = await self.poster.post(event)
        took = time.monotonic() - sent
        return classify(answer, now=self.clock(), max_wait=RETRY_AFTER_MAX_SECONDS), took


# How loud each outcome is logged: a dead letter is news, a retry worth a line; a delivered,
# held or already delivered goal only at DEBUG (the counters and Celery's task lines count
# them).
_LOUDNESS = {Act.DEAD: logging.WARNING, Act.WAIT: logging.INFO}


def _log_outcome(
    event_id: str,
    decision: Decision,
    verdict: Verdict | None,
    answered: tuple[str, float] | None,
) -> None:
    """One line for a goal's outcome, once it is recorded: the goal, what became of it and
    why, DataFast's status (or what went wrong), the attempt and the request's duration; the
    same as fields in JSON (see :mod:`goalqueue.logs`)."""
    level = _LOUDNESS.get(decision.act, logging.DEBUG)
    if not logger.isEnabledFor(level):
        return
    event = decision.event
    attempt = None if event is None else event.attempts + (decision.act is Act.DELIVERED)
    status = None if verdict is None else verdict.status_code
    duration = None if answered is None else round(answered[1], 6)
    summary = _summary(decision.act, decision.why)
    answer = ""
    if verdict is not None:
        said = [str(status or verdict.answer), *([repr(verdict.error)] if verdict.error else [])]
        answer = ": " + " ".join(said)
    tried = "" if duration is None else f" on attempt {attempt}, in {duration * 1000:.0f} ms"
    fields = {"event_id": event_id, "outcome": str(decision.act), "reason": decision.why,
              "status": status, "attempt": attempt, "duration": duration}  # fmt: skip
    logger.log(level, "goal %s %s%s%s", event_id, summary, answer, tried, extra=fields)
