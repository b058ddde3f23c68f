"""Recording outcomes: what one write to Redis records, and the recorder that writes them.

An answer from DataFast is recorded the moment it is handled: the time between the two is what
a SIGKILL turns into duplicates. A :class:`Record` is everything one answer (or several) changes:
SETTLE's outcomes, a pause, the end of a pause. The :class:`Recorder` has each written from the
coroutine that brings it, so that no answer waits for another write to come back first; the
:class:`Writer` writes one in a pipelined round trip.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from goalqueue import attempts
from goalqueue.attempts import Attempt
from goalqueue.config import Settings
from workers.decide import Act, Decision, Pause
from workers.outage import Outage
from workers.scripts import Defer, GoalCopy, Settlement, Standing, WorkerScripts

logger = logging.getLogger(__name__)

RETRY_WRITE_SECONDS = 0.25
WRITES_AT_ONCE = 8
# Once a shutdown has begun, how much longer a write Redis does not take is retried: its goals
# stay in the ledger, to be sent again, rather than hold the shutdown for the length of an outage.
STOPPING_RETRY_SECONDS = 3.0


@dataclass(slots=True)
class Record:
    """What one write records: SETTLE's outcomes, a pause, whether a pause is over, whether the
    probe went unsent (expired, say) so that another goal may probe."""

    settlement: Settlement = field(default_factory=Settlement)
    pause: Pause | None = None
    resume: bool = False
    release: bool = False

    @classmethod
    def of(
        cls,
        goal: GoalCopy,
        decision: Decision,
        answered: tuple[str, float] | None = None,
        attempt: str = "",
    ) -> Record:
        """What ``decision`` about ``goal`` writes; ``answered``: DataFast's answer (its class)
        and how long it took, for the counters; ``attempt``: what to add to the goal's attempt
        log (see :func:`attempt_of`), if anything."""
        record = cls(pause=decision.pause, resume=decision.resume, release=decision.release)
        settlement = record.settlement
        if answered is not None:
            settlement.answered(*answered)
        act, event = decision.act, decision.event
        if act is Act.DELIVERED:
            settlement.delivered(
                goal.entry, goal.event_id, decision.remote_id, decision.latency, attempt
            )
        elif act is Act.DEAD and decision.letter is not None:
            # a poison message's entry is the message itself: it has no ledger entry to free
            entry = "" if goal.standing is Standing.POISON else goal.entry
            settlement.bury(entry, decision.letter, attempt)
        elif act is Act.WAIT and event is not None:
            counter = f"deferred:{decision.why}" if decision.pause else "transient"
            settlement.park(goal.entry, event, decision.until, counter, attempt)
        elif act is Act.HOLD and event is not None:
            settlement.park(goal.entry, event, decision.until, attempt=attempt)
        elif act is Act.FORGET:
            settlement.forget(goal.entry, goal.event_id)
        return record

    @classmethod
    def merge(cls, records: Iterable[Record]) -> Record:
        """One record for all of them; the last pause wins, as it was set last."""
        merged = cls()
        for record in records:
            merged.settlement.extend(record.settlement)
            merged.pause = record.pause or merged.pause
            merged.resume |= record.resume
            merged.release |= record.release
        return merged


def attempt_of(
    decision: Decision, status: int | None, seconds: float | None, worker: str, at: float
) -> str:
    """What ``decision`` (taken at ``at`` on ``worker``, after DataFast answered ``status``
    in ``seconds``, if it was asked) adds to the goal's attempt log, as JSON: nothing for a
    goal delivered or held before any failed attempt, so that most goals keep no log."""
    act, event = decision.act, decision.event
    if act is Act.DELIVERED or act is Act.HOLD:
        if event is None or not event.attempts:
            return ""
        name = attempts.DELIVERED if act is Act.DELIVERED else attempts.HOLD
        until = None if act is Act.DELIVERED else decision.until
        return Attempt(at, worker, name, status, None, seconds, decision.why, until).to_json()
    error = None if event is None else event.last_error
    if act is Act.DEAD:
        return Attempt(at, worker, attempts.DEAD, status, error, seconds, decision.why).to_json()
    if act is Act.WAIT:
        pause = decision.pause
        name, until = (
            (attempts.WAIT, decision.until) if pause is None else (attempts.PAUSE, pause.until)
        )
        return Attempt(at, worker, name, status, error, seconds, decision.why, until).to_json()
    return ""


class Recorder:
    """Writes each record at once, from the coroutine that brings it.

    Up to ``WRITES_AT_ONCE`` writes may be on their way at a time; records that come meanwhile
    wait, and go together into one write as soon as one of those is done. A failed write fails
    every record in it.
    """

    def __init__(self, write: Callable[[Record], Awaitable[None]]) -> None:
        self._write = write
        self._writing = 0
        self._waiting: list[tuple[Record, asyncio.Future[None]]] = []
        self._groups: set[asyncio.Task[None]] = set()

    async def record(self, record: Record) -> None:
        """Returns once ``record`` is written."""
        if self._writing < WRITES_AT_ONCE:
            await self._write_group([record], [])
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((record, future))
        await future

    async def _write_group(
        self, records: list[Record], futures: list[asyncio.Future[None]]
    ) -> None:
        self._writing += 1
        try:
            await self._write(Record.merge(records))
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
        records = [record for record, _ in waiting]
        futures = [future for _, future in waiting]
        group = asyncio.create_task(self._write_group(records, futures))
        self._groups.add(group)
        group.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        """A group written for waiting records: each of them saw the outcome already."""
        self._groups.discard(task)
        if not task.cancelled():
            task.exception()


class Writer:
    """Writes records to Redis for one worker process."""

    def __init__(
        self,
        settings: Settings,
        client: redis.asyncio.Redis,
        scripts: WorkerScripts,
        clock: Callable[[], float] = time.time,
        outage: Outage | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.scripts = scripts
        self.clock = clock
        self.outage = outage or Outage(settings.outage_reminder_seconds)
        self._give_up_at = math.inf

    def stop(self) -> None:
        """A shutdown has begun: retry a failed write for at most ``STOPPING_RETRY_SECONDS``
        more."""
        self._give_up_at = min(self._give_up_at, time.monotonic() + STOPPING_RETRY_SECONDS)

    async def write(self, record: Record) -> None:
        """Write ``record`` in one round trip, waiting out a Redis outage or stall.

        DataFast may already have answered: giving up here means the goal is sent again. The
        goals are this worker's for the visibility timeout, counted while Redis answers: a Redis
        that does not answer (down, restarting, frozen) re-queues nothing, and once it answers
        again the reconciler gives them the whole timeout anew (see ``lua/reconcile.lua``). So
        keep trying while Redis does not answer, and give up only once it has answered for half
        the visibility timeout and the write still fails, or, during a shutdown, after
        ``STOPPING_RETRY_SECONDS`` (those goals stay in the ledger, to be sent again). Every
        part is safe to repeat: a copy that no longer owns its entry changes nothing, and a
        pause already on is not slowed again.
        """
        budget = self.settings.visibility_timeout_seconds / 2
        deadline = time.monotonic() + budget
        while True:
            try:
                slowed = await self._write_once(record)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.outage.failed("recording outcomes", exc)
                now = time.monotonic()
                if not isinstance(exc, redis.AuthenticationError):  # Redis did not answer
                    deadline = max(deadline, now + budget)
                if now > min(deadline, self._give_up_at):
                    raise
                await asyncio.sleep(RETRY_WRITE_SECONDS)
        self.outage.succeeded()
        _log(record, slowed)

    async def _write_once(self, record: Record) -> str | None:
        """One pipeline: resume, pause, settle; returns the new pace if the pause slowed it.
        After NOSCRIPT (no script of it ran) the scripts are loaded and it goes again."""
        try:
            return await self._pipeline(record)
        except NoScriptError:
            await self.scripts.load()
            return await self._pipeline(record)

    async def _pipeline(self, record: Record) -> str | None:
        settings = self.settings
        async with self.redis.pipeline(transaction=False) as pipe:
            if record.resume:
                pipe.delete(settings.keys.pause, settings.keys.probe)
            elif record.release:
                pipe.delete(settings.keys.probe)
            if (pause := record.pause) is not None:
                defer = Defer(pause.until, pause.reason, pause.streak, pause.slows)
                self.scripts.defer(defer, self.clock(), pipe)
            if record.settlement.outcomes:
                self.scripts.settle(record.settlement, pipe)
            replies = await pipe.execute()
        return replies[int(record.resume or record.release)] if pause is not None else None


def _resolve(futures: list[asyncio.Future[None]], exc: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


def _log(record: Record, slowed: str | None) -> None:
    """The pauses and resumptions a write recorded (each goal's outcome is its deliverer's to
    log: :mod:`workers.delivery`)."""
    if record.resume:
        logger.warning("DataFast accepts goals again: delivery resumed")
    if record.pause is not None:
        _log_pause(record.pause, slowed)


def _log_pause(pause: Pause, slowed: str | None) -> None:
    status = int(pause.answer) if pause.answer.isdigit() else None
    fields = {"outcome": "paused", "reason": pause.reason, "status": status}
    if (message := _OPERATOR_ERRORS.get(pause.reason)) is not None:
        logger.error(message + _KEPT, pause.answer, pause.error, extra=fields)
        return
    logger.warning(
        "DataFast answered %s (%s): delivery paused for %.1f s%s",
        pause.answer,
        pause.reason,
        pause.seconds,
        f"; sending resumes at {float(slowed):g} goals/s and speeds up" if slowed else "",
        extra=fields,
    )


# Pauses only an operator can end for good: a probe retries them, ever less often.
_OPERATOR_ERRORS = {
    "auth": "DataFast rejected the API key (%s: %s). Set a valid DATAFAST_API_KEY",
    "redirect": (
        "DATAFAST_API_URL answered with a redirect (%s: %s), which goalqueue never follows. "
        "Set DATAFAST_API_URL to DataFast's goals endpoint"
    ),
    "tls": (
        "TLS failed with DATAFAST_API_URL (%s: %s). Check the URL, the CA certificates "
        "(SSL_CERT_FILE) and any proxy in between"
    ),
}
_KEPT = " and restart the workers to resume at once. Delivery is paused and no goal is dropped."
