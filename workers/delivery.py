"""Deliver goals: the path every goal takes on a worker process's event loop, top to bottom.

take them from the ledger   (gone? already delivered? paused? a token to send?)   one TAKE call
POST each to DataFast       (all at once, on the process's one AsyncClient)
classify each answer        (workers.policy)
settle it                   delivered marker | dead letter | waiting set (+ pause, slower pace)

A task is given one goal and claims more off the queue in the same TAKE call, as many as the
process has room for (``GOALQUEUE_MAX_IN_FLIGHT``) and the shared pace allows. The task returns,
and Celery acks its message, once its own goal is settled; the claimed goals carry on without
it. They never enter kombu's unacknowledged bookkeeping: if the worker dies, the ledger still
holds them and the reconciler puts them back.

Every answer is recorded as soon as it arrives (see :class:`Recorder`): the time between
DataFast's answer and the recorded outcome is what a SIGKILL turns into duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import redis
import redis.asyncio

from goalqueue import keys
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.scripts import ScriptArg, Scripts
from workers.client import post_goal
from workers.policy import (
    RETRY_AFTER_MAX_SECONDS,
    Outcome,
    Verdict,
    backoff,
    classify,
    pause_length,
)

logger = logging.getLogger(__name__)

RETRY_WRITE_SECONDS = 0.25


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


@dataclass(frozen=True, slots=True)
class Pause:
    """Delivery paused for everyone until ``until`` (see :data:`goalqueue.scripts.DEFER`)."""

    verdict: Verdict
    streak: int
    until: float
    seconds: float


class Settlement:
    """Outcomes to record in one round trip: SETTLE's outcomes, a pause, a resumption."""

    def __init__(self) -> None:
        self.args: list[ScriptArg] = []
        self.letters: list[DeadLetter] = []
        self.pause: Pause | None = None
        self.resume = False

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

    @classmethod
    def merge(cls, settlements: Iterable[Settlement]) -> Settlement:
        """One settlement for all of them; the last pause wins, as it was set last."""
        merged = cls()
        for settlement in settlements:
            merged.args += settlement.args
            merged.letters += settlement.letters
            merged.pause = settlement.pause or merged.pause
            merged.resume |= settlement.resume
        return merged


class Recorder:
    """Writes each settlement at once, from the coroutine that brings it.

    Up to ``limit`` writes may be on their way at a time; settlements that come meanwhile wait,
    and go together into one write as soon as one of those is done. The time from an answer to
    its recorded outcome is so one round trip, not the wait for another write to finish: on a
    busy event loop that wait grew to tens of milliseconds. A failed write fails every
    settlement in it.
    """

    def __init__(self, write: Callable[[Settlement], Awaitable[None]], limit: int = 8) -> None:
        self._write = write
        self._limit = limit
        self._writing = 0
        self._waiting: list[tuple[Settlement, asyncio.Future[None]]] = []
        self._groups: set[asyncio.Task[None]] = set()

    async def record(self, settlement: Settlement) -> None:
        """Returns once ``settlement`` is written."""
        if self._writing < self._limit:
            await self._write_group([settlement], [])
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((settlement, future))
        await future

    async def _write_group(
        self, settlements: list[Settlement], futures: list[asyncio.Future[None]]
    ) -> None:
        self._writing += 1
        try:
            await self._write(Settlement.merge(settlements))
        except Exception as exc:
            _resolve(futures, exc)
            raise
        else:
            _resolve(futures, None)
        finally:
            self._writing -= 1
            if self._waiting:
                self._write_waiting()

    def _write_waiting(self) -> None:
        """Everything that waited for a free write, as one group of its own."""
        waiting, self._waiting = self._waiting, []
        settlements = [settlement for settlement, _ in waiting]
        futures = [future for _, future in waiting]
        group = asyncio.create_task(self._write_group(settlements, futures))
        self._groups.add(group)
        group.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        """A group written for waiting settlements: each of them saw the outcome already."""
        self._groups.discard(task)
        if not task.cancelled():
            task.exception()


def _resolve(futures: list[asyncio.Future[None]], exc: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


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
        self.scripts = Scripts(client)
        self.recorder = Recorder(self._write)
        self.clock = clock
        self.rand = rand
        self.announce = announce
        self.held = 0  # goals taken (or being taken) and not yet settled
        self.stopping = False
        self._claimed: set[asyncio.Task[Delivery]] = set()

    async def deliver(self, event_id: str, seq: int) -> Delivery:
        """Deliver a task's goal, and start on the goals its TAKE claims; returns once the
        task's own goal is settled (the claimed ones carry on)."""
        started = time.monotonic()
        now, wait, taken = await self._take(event_id, seq)
        own, *claimed = taken
        for copy in claimed:
            task = asyncio.create_task(self._handle(copy, now, wait, started))
            self._claimed.add(task)
            task.add_done_callback(self._claimed_done)
        return await self._handle(own, now, wait, started)

    async def settled(self) -> None:
        """Wait until every goal claimed so far is settled."""
        while self._claimed:
            await asyncio.wait(set(self._claimed))

    async def _take(self, event_id: str, seq: int) -> tuple[float, float, list[Taken]]:
        """TAKE the task's goal and claims: once the pace has a token for it, or, after waiting
        a quarter of the visibility timeout (or when stopping), holding it in the waiting set."""
        patience = time.monotonic() + self.settings.visibility_timeout_seconds / 4
        while True:
            now = self.clock()
            patient = not self.stopping and time.monotonic() < patience
            wait, taken = await self._take_once(event_id, seq, now, patient)
            if taken:
                return now, wait, taken
            await asyncio.sleep(wait)

    async def _take_once(
        self, event_id: str, seq: int, now: float, patient: bool
    ) -> tuple[float, list[Taken]]:
        # The room is reserved before the call, so that TAKEs running at once share it.
        claim = 0 if self.stopping else max(0, self.settings.max_in_flight - self.held - 1)
        self.held += claim + 1
        settings = self.settings
        try:
            flat = await self.scripts.take(
                [
                    now,
                    settings.key_fingerprint,
                    settings.probe_lease_ms,
                    claim,
                    keys.TASK_NAME,
                    keys.DELIVERED_PREFIX,
                    settings.max_rate or 0,
                    int(patient),
                    event_id,
                    seq,
                ]
            )
        finally:
            self.held -= claim + 1
        wait, fields = int(flat[0]) / 1000, flat[1:]
        self.held += len(fields) // 5
        taken = [
            Taken(str(eid), int(seq), verdict, entry, int(streak or 0))
            for eid, seq, verdict, entry, streak in _fives(fields)
        ]
        return wait, taken

    def _claimed_done(self, task: asyncio.Task[Delivery]) -> None:
        self._claimed.discard(task)
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            logger.error(
                "a claimed goal was not settled (the reconciler will re-queue it): %s", exc
            )
        elif self.announce is not None:
            self.announce(task.result())

    async def _handle(self, copy: Taken, now: float, wait: float, started: float) -> Delivery:
        try:
            settlement = Settlement()
            prepared = self._prepare(copy, now, wait, settlement)
            if isinstance(prepared, GoalEvent):
                result = await self._send(copy, prepared, now, settlement)
            else:
                result = prepared
            if settlement.args:
                await self.recorder.record(settlement)
        finally:
            self.held -= 1
        return Delivery(copy.event_id, result, time.monotonic() - started)

    def _prepare(
        self, copy: Taken, now: float, wait: float, settlement: Settlement
    ) -> str | GoalEvent:
        """The event to send, or what happened to a copy that needs no request (a held goal is
        due again after TAKE's ``wait``: none while paused, the next token for the pace)."""
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
            settlement.park(copy.entry, event, due=now + wait)
            return "held while paused" if wait == 0 else "held for the pace"
        return event

    async def _send(self, copy: Taken, event: GoalEvent, now: float, settlement: Settlement) -> str:
        """POST the goal and put its outcome in ``settlement``."""
        answer = await post_goal(self.http, self.settings.api_url, event)
        verdict = classify(answer, now=self.clock(), max_wait=RETRY_AFTER_MAX_SECONDS)
        settlement.resume = copy.verdict == "probe" and verdict.outcome is not Outcome.DEFERRED
        if verdict.outcome is Outcome.DELIVERED:
            settlement.delivered(copy.entry, event.event_id, verdict.remote_id or "")
            return verdict.outcome.value
        event = event.attempted(now, verdict.status_code, verdict.error)
        return self._settle(settlement, copy, event, verdict)

    def _settle(
        self, settlement: Settlement, copy: Taken, event: GoalEvent, verdict: Verdict
    ) -> str:
        """Put the outcome of a goal DataFast did not take into ``settlement``."""
        now = self.clock()
        if verdict.outcome is Outcome.PERMANENT:
            settlement.bury(copy.entry, DeadLetter.of(event, verdict.reason or "client_error"))
        elif verdict.outcome is Outcome.DEFERRED:
            streak = copy.streak + 1 if copy.verdict == "probe" else 0
            length = self._pause_length(verdict, streak)
            settlement.pause = Pause(verdict, streak, now + length, length)
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

    def _pause_length(self, verdict: Verdict, streak: int) -> float:
        if verdict.retry_after is not None:
            return verdict.retry_after
        return pause_length(
            streak, base=self.settings.retry_base_seconds, cap=self.settings.retry_max_seconds
        )

    async def _write(self, settlement: Settlement) -> None:
        """Record a settlement in one round trip, waiting out a short Redis outage.

        DataFast may already have answered: giving up here means the goal is sent again, so
        keep trying for half the visibility timeout (after that the reconciler re-queues it).
        Every part is safe to repeat: a copy that no longer owns its entry changes nothing, and a
        pause already on is not slowed again.
        """
        deadline = time.monotonic() + self.settings.visibility_timeout_seconds / 2
        while True:
            try:
                slowed = await self._write_once(settlement)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                logger.warning("could not record goals' outcomes yet (%s): retrying", exc)
                await asyncio.sleep(RETRY_WRITE_SECONDS)
        _log(settlement, slowed)

    async def _write_once(self, settlement: Settlement) -> str | None:
        """One pipeline: resume, pause, settle; returns the new pace if the pause slowed it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if settlement.resume:
                pipe.delete(keys.PAUSE, keys.PROBE)
            if (pause := settlement.pause) is not None:
                await self.scripts.defer(self._defer_args(pause), client=pipe)
            if settlement.args:
                ttl_ms = int(self.settings.delivered_ttl_seconds * 1000)
                await self.scripts.settle(settlement.script_args(ttl_ms), client=pipe)
            replies = await pipe.execute()
        return replies[int(settlement.resume)] if pause is not None else None

    def _defer_args(self, pause: Pause) -> list[ScriptArg]:
        verdict = pause.verdict
        return [
            pause.until,
            verdict.reason or "",
            pause.streak,
            self.settings.key_fingerprint,
            self.clock(),
            self.settings.max_rate or 0,
            int(verdict.status_code == 429),
        ]


def _fives(fields: list[Any]) -> Iterable[tuple[Any, ...]]:
    return (tuple(fields[i : i + 5]) for i in range(0, len(fields), 5))


def _log(settlement: Settlement, slowed: str | None) -> None:
    for letter in settlement.letters:
        logger.warning(
            "goal %s dead-lettered: %s (status %s) %r",
            letter.event_id,
            letter.reason,
            letter.status_code,
            letter.error or "",
        )
    if settlement.resume:
        logger.warning("DataFast accepts goals again: delivery resumed")
    if (pause := settlement.pause) is None:
        return
    verdict = pause.verdict
    if verdict.reason == "auth":
        logger.error(
            "DataFast rejected the API key (401: %s). Delivery is paused and no goal is "
            "dropped; set a valid DATAFAST_API_KEY and restart the workers to resume.",
            verdict.error,
        )
        return
    logger.warning(
        "DataFast answered %s (%s): delivery paused for %.1f s%s",
        verdict.status_code,
        verdict.reason,
        pause.seconds,
        f"; sending resumes at {float(slowed):g} goals/s and speeds up" if slowed else "",
    )
