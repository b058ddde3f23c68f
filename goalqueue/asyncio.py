"""The asyncio producer: enqueue goals from an event loop without ever blocking it.

    queue = goalqueue.AsyncGoalQueue()
    event_id = await queue.track_goal(visitor_id, "signup", metadata={"plan": "pro"})
    await queue.aclose()

or, on the process-wide queue of the running loop, ``await goalqueue.atrack_goal(...)``.

The same contract as :class:`goalqueue.GoalQueue` (see :mod:`goalqueue.producer`): the same
validation and the same ENQUEUE round (:mod:`goalqueue.rounds`) on ``redis.asyncio``, the whole
call cut by ``asyncio.timeout`` to ``GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS``, and with
``GOALQUEUE_SPOOL_DIR`` the same spool. Writing to the spool (SQLite, an fsync) runs in a worker
thread, never on the loop; the spool's flusher is a thread too, re-sending with a blocking client
of its own.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from goalqueue import connections
from goalqueue.config import Settings, get_settings
from goalqueue.deadline import Deadline, async_connection_class, deadline
from goalqueue.errors import EnqueueError
from goalqueue.event import GoalEvent
from goalqueue.goals import goal_event, goal_events, minted
from goalqueue.producer import GoalQueue, open_backlog
from goalqueue.rounds import Pair, Round, Shortfall, pairs
from goalqueue.scripts import EnqueueScript


@dataclass(eq=False)
class _Call:
    """One call's goals, waiting for a round: group commit on the event loop. One round is on
    its way at a time, and calls made meanwhile go together in the next one, so that 64
    concurrent calls cost a few round trips rather than 64, while a lone call goes at once.
    ``future`` gets what its round left unconfirmed; ``deadline`` is the loop time by which the
    call must have its answer; ``new_ids``: its ids were all just made (a round of such calls
    only looks none up)."""

    pairs: Sequence[Pair]
    future: asyncio.Future[Shortfall | None]
    deadline: float
    new_ids: bool


def _settle(calls: list[_Call], shortfall: Shortfall | None) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_result(shortfall)


class AsyncGoalQueue:
    """Enqueues goal events from an event loop; use it on the loop it was first used on.

    ``AsyncGoalQueue()`` reads its settings from the environment; ``broker_url=`` or
    ``settings=`` set them explicitly. Close it with ``await queue.aclose()`` (or use it as an
    ``async with``).
    """

    def __init__(self, broker_url: str | None = None, *, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        if broker_url is not None:
            settings = replace(settings, broker_url=broker_url)
        self.settings = settings
        self.redis = connections.async_client(
            settings,
            pool_wait=settings.enqueue_timeout_seconds,
            connection_class=async_connection_class(settings),
        )
        self.script = EnqueueScript(settings.keys)
        # The spool's flusher is a thread: it re-sends through a blocking queue of its own.
        self._resender = (
            GoalQueue(settings=replace(settings, spool_dir=None)) if settings.spool_dir else None
        )
        self.backlog = open_backlog(settings, self._resender)
        self._waiting: list[_Call] = []
        self._round: asyncio.Task[None] | None = None
        self._left_behind: set[asyncio.Task[list[object]]] = set()

    async def track_goal(
        self,
        visitor_id: str,
        name: str,
        *,
        metadata: Mapping[str, object] | None = None,
        description: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Validate and enqueue one goal; returns its event id (see
        :meth:`goalqueue.GoalQueue.track_goal`)."""
        event = goal_event(visitor_id, name, metadata, description, event_id)
        await self.enqueue([event], new_ids=event_id is None)
        return event.event_id

    async def track_goals(self, goals: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every goal, then enqueue them all in one round trip (see
        :meth:`goalqueue.GoalQueue.track_goals`)."""
        goals = list(goals)
        events = goal_events(goals)
        await self.enqueue(events, new_ids=minted(goals))
        return [event.event_id for event in events]

    async def enqueue(self, events: Sequence[GoalEvent], *, new_ids: bool = False) -> None:
        """Enqueue events that carry their ids: to Redis or, failing that, to the spool (see
        :meth:`goalqueue.GoalQueue.enqueue`)."""
        backlog = self.backlog
        if backlog is None:
            await self.enqueue_payloads(pairs(events), new_ids=new_ids)
        elif backlog.redis_down:
            await asyncio.to_thread(backlog.keep, events)
        else:
            try:
                await self.enqueue_payloads(pairs(events), new_ids=new_ids)
            except EnqueueError as exc:
                await asyncio.to_thread(backlog.keep_unconfirmed, events, exc)
            else:
                backlog.sent()

    async def enqueue_payloads(self, pairs: Sequence[Pair], *, new_ids: bool = False) -> None:
        """Enqueue ``(event id, event JSON)`` pairs to Redis only (``new_ids``: as
        :meth:`goalqueue.GoalQueue.enqueue_payloads`); raises
        :class:`~goalqueue.EnqueueError` when Redis does not confirm them all in time.

        One round is on its way at a time; calls made meanwhile wait and go together in the
        next one (see :class:`_Call`), and each waits at most the enqueue timeout.
        """
        if not pairs:
            return
        loop = asyncio.get_running_loop()
        timeout = self.settings.enqueue_timeout_seconds
        call = _Call(pairs, loop.create_future(), loop.time() + timeout, new_ids)
        self._waiting.append(call)
        if self._round is None:
            self._next_round()
        shortfall = await call.future
        if shortfall is not None and shortfall.leaves(pairs):
            raise Round(pairs, self.settings).error(shortfall)

    def _next_round(self) -> None:
        """Send everything waiting as one round, in a task of its own."""
        calls, self._waiting = self._waiting, []
        self._round = asyncio.create_task(self._send_round(calls))

    async def _send_round(self, calls: list[_Call]) -> None:
        """One round for ``calls``, within the earliest of their deadlines (a round before it
        ended by its own, earlier one: no call waits past its deadline); calls already past
        theirs were never sent."""
        now = asyncio.get_running_loop().time()
        late = [call for call in calls if call.deadline <= now]
        calls = [call for call in calls if call.deadline > now]
        _settle(late, Round([], self.settings).failure(self._timed_out, sent=False))
        try:
            if calls:
                _settle(calls, await self._send_before(calls, min(c.deadline for c in calls) - now))
        except Exception as exc:  # a bug: each caller must still get an answer
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
        finally:
            self._round = None
            if self._waiting:
                self._next_round()

    async def _send_before(self, calls: list[_Call], timeout: float) -> Shortfall | None:
        new_ids = all(call.new_ids for call in calls)
        this = Round([pair for call in calls for pair in call.pairs], self.settings, new_ids)
        with deadline(timeout) as current:
            # The round runs as a task of its own that the deadline leaves behind, rather than
            # under asyncio.timeout: a cancellation can be swallowed on its way down (seen: a
            # round with a 5 ms deadline ended 1.6 s later, when a frozen Redis thawed; redis-py
            # sends through asyncio.wait_for, which on Python 3.11 can swallow one). One left
            # behind ends when Redis answers or drops the connection; if it got through, the
            # goals it carried are known to ENQUEUE, so sending them again (the spool does)
            # adds nothing.
            sending = asyncio.create_task(self._send(this, current))
            done, _ = await asyncio.wait({sending}, timeout=timeout)
            if not done:
                sending.cancel()
                self._left_behind.add(sending)
                sending.add_done_callback(self._forget)
                return this.failure(self._timed_out, current.sent)
            try:
                return this.shortfall(sending.result())
            except redis.RedisError as exc:
                return this.failure(exc, current.sent)

    def _forget(self, sending: asyncio.Task[list[object]]) -> None:
        """A round left behind by its deadline has ended: its goals were answered for already
        (spooled, or reported as maybe enqueued), so what it ended with is only retrieved."""
        self._left_behind.discard(sending)
        if not sending.cancelled():
            sending.exception()

    @property
    def _timed_out(self) -> redis.TimeoutError:
        return redis.TimeoutError(f"no answer within {self.settings.enqueue_timeout_seconds:g} s")

    async def _send(self, this: Round, current: Deadline) -> list[object]:
        replies = await self._send_once(this, current)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            this = this.again()
            for script in self.script.both:
                await self.redis.script_load(script.source)
            replies = await self._send_once(this, current)
        return replies

    async def _send_once(self, this: Round, current: Deadline) -> list[object]:
        commands = this.commands(self.script)
        if this.single:
            try:
                sha, args = commands[0]
                return [await self.redis.evalsha(sha, 0, *args)]
            except NoScriptError as exc:
                return [exc]
        async with self.redis.pipeline(transaction=False) as pipe:
            for sha, args in commands:
                pipe.evalsha(sha, 0, *args)
            if this.replicas:
                pipe.wait(this.replicas, current.wait_ms())
            replies: list[object] = await pipe.execute(raise_on_error=False)
        return replies

    async def aclose(self) -> None:
        """Let the rounds on their way finish, close the Redis client, and stop the spool's
        flusher if one runs. A round its deadline left behind ends once the client's connections
        are closed under it; it is waited for at most the enqueue timeout more."""
        while self._round is not None:
            await asyncio.wait([self._round])
        await self.redis.aclose()
        if self._left_behind:
            await asyncio.wait(self._left_behind, timeout=self.settings.enqueue_timeout_seconds)
        if self.backlog is not None:
            await asyncio.to_thread(self.backlog.close)
        if self._resender is not None:
            self._resender.close()

    async def __aenter__(self) -> AsyncGoalQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGoalQueue] = (
    weakref.WeakKeyDictionary()
)
_factory: Callable[[], AsyncGoalQueue] = AsyncGoalQueue


def default_async_queue() -> AsyncGoalQueue:
    """The running loop's process-wide queue (a ``redis.asyncio`` client belongs to one loop):
    made by the factory :func:`set_default_async_queue` installed, else from the environment."""
    loop = asyncio.get_running_loop()
    queue = _defaults.get(loop)
    if queue is None:
        queue = _defaults[loop] = _factory()
    return queue


async def close_default_async_queue() -> None:
    """Close the running loop's process-wide queue, if it has one (a lifespan's shutdown)."""
    queue = _defaults.pop(asyncio.get_running_loop(), None)
    if queue is not None:
        await queue.aclose()


def set_default_async_queue(
    factory: Callable[[], AsyncGoalQueue] | None,
) -> Callable[[], AsyncGoalQueue]:
    """Make each loop's process-wide queue with ``factory`` (None: from the environment) from
    now on, forgetting those made so far; returns the factory it replaces."""
    global _factory
    previous, _factory = _factory, factory or AsyncGoalQueue
    _defaults.clear()
    return previous


async def atrack_goal(
    visitor_id: str,
    name: str,
    *,
    metadata: Mapping[str, object] | None = None,
    description: str | None = None,
    event_id: str | None = None,
) -> str:
    """Validate and enqueue one goal on the running loop's process-wide queue."""
    return await default_async_queue().track_goal(
        visitor_id, name, metadata=metadata, description=description, event_id=event_id
    )


async def atrack_goals(goals: Iterable[Mapping[str, Any]]) -> list[str]:
    """Validate and enqueue many goals on the running loop's process-wide queue."""
    return await default_async_queue().track_goals(goals)
