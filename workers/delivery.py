"""Deliver one goal: the path a worker runs for every task, top to bottom.

take it from the ledger  (gone? already delivered? paused?)
POST it to DataFast
classify the answer      (workers.policy)
settle it                delivered marker | dead letter | waiting set (+ pause)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from goalqueue import keys
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.scripts import Scripts
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


class Deliverer:
    """Everything one worker process needs to deliver goals: Redis, HTTP, settings."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        http: httpx.Client,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.scripts = Scripts(client)
        self.http = http
        self.clock = clock
        self.rand = rand

    def deliver(self, event_id: str, seq: int) -> str:
        """Process one queued copy of a goal; returns what happened, for the task's result."""
        now = self.clock()
        state, entry, streak = self._take(event_id, seq, now)
        if state == "gone":
            return "stale copy"
        try:
            event = GoalEvent.from_json(entry)
        except ValueError as exc:
            self._bury(entry, event_id, DeadLetter.poison(entry, str(exc)))
            return "poison"
        if state == "done":
            self.redis.zrem(keys.LEDGER, entry)
            return "already delivered"
        if now - event.enqueued_at > self.settings.max_age_seconds:
            self._bury(entry, event_id, DeadLetter.of(event, "expired"))
            return "expired"
        if state == "hold":
            self._park(entry, event, due=now)
            return "held while paused"
        verdict = classify(
            post_goal(self.http, self.settings.api_url, event),
            now=self.clock(),
            max_wait=RETRY_AFTER_MAX_SECONDS,
        )
        return self._settle(
            entry,
            event.attempted(now, verdict.status_code, verdict.error),
            verdict,
            probe=state == "probe",
            streak=streak,
        )

    def _take(self, event_id: str, seq: int, now: float) -> tuple[str, str, int]:
        reply: list[Any] = self.scripts.take(
            [seq, event_id, now, self.settings.key_fingerprint, self.settings.probe_lease_ms],
            DELIVERED=keys.delivered(event_id),
        )
        state = reply[0]
        entry = reply[1] if len(reply) > 1 else ""
        streak = int(reply[2]) if len(reply) > 2 and reply[2] else 0
        return state, entry, streak

    def _settle(
        self, entry: str, event: GoalEvent, verdict: Verdict, *, probe: bool, streak: int
    ) -> str:
        now = self.clock()
        if verdict.outcome is Outcome.DELIVERED:
            self._record(
                self.scripts.delivered,
                [entry, verdict.remote_id or "", int(self.settings.delivered_ttl_seconds * 1000)],
                DELIVERED=keys.delivered(event.event_id),
            )
        elif verdict.outcome is Outcome.PERMANENT:
            self._bury(
                entry, event.event_id, DeadLetter.of(event, verdict.reason or "client_error")
            )
        elif verdict.outcome is Outcome.DEFERRED:
            self._pause(verdict, now=now, streak=streak + 1 if probe else 0)
            self._park(entry, event, due=now)
            return f"deferred ({verdict.reason})"
        else:
            delay = backoff(
                event.attempts,
                base=self.settings.retry_base_seconds,
                cap=self.settings.retry_max_seconds,
                rand=self.rand,
            )
            self._park(entry, event, due=now + delay)
        if probe:
            self.redis.delete(keys.PAUSE, keys.PROBE)
            logger.warning("DataFast accepts goals again: delivery resumed")
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

    def _record(self, script: Callable[..., object], args: list[Any], **dynamic: str) -> None:
        """Record a goal's new state, waiting out a short Redis outage.

        DataFast has already answered: giving up here means the goal is sent again, so keep
        trying for half the visibility timeout (after that the reconciler would re-queue it).
        """
        deadline = time.monotonic() + self.settings.visibility_timeout_seconds / 2
        while True:
            try:
                script(args, **dynamic)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                logger.warning("could not record a goal's outcome yet (%s): retrying", exc)
                time.sleep(0.25)

    def _park(self, entry: str, event: GoalEvent, *, due: float) -> None:
        self._record(self.scripts.park, [entry, due, event.to_json()])

    def _bury(self, entry: str, event_id: str, letter: DeadLetter) -> None:
        self._record(self.scripts.bury, [entry, letter.event_id, letter.to_json()])
        logger.warning(
            "goal %s dead-lettered: %s (status %s) %r",
            event_id,
            letter.reason,
            letter.status_code,
            letter.error or "",
        )
