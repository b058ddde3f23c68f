"""The attempt log: written by SETTLE with the outcome it records, bounded, kept for a while,
and only for goals that needed more than one attempt (real Redis, the workers' own code)."""

from __future__ import annotations

import time

import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.attempts import Attempt
from goalqueue.event import GoalEvent
from tests.helpers.settings import KEYS
from workers.decide import Act, Decision, Pause
from workers.recording import attempt_of
from workers.scripts import Settlement, SweeperScripts

pytestmark = pytest.mark.integration

HOUR_MS, MONTH_MS = 3600_000, 30 * 86400_000


def test_a_log_keeps_the_last_ten_attempts_for_its_retention(
    redis_client: redis.Redis, queue: GoalQueue
) -> None:
    # Given a goal that got a 503 twelve times
    event_id = queue.track_goal("v", "signup")
    (entry,) = redis_client.zrange(KEYS.ledger, 0, -1)
    event = GoalEvent.from_json(entry)
    scripts = SweeperScripts(redis_client, KEYS)
    for attempt in range(12):
        event = event.attempted(time.time(), 503, "HTTP 503")
        decision = Decision(Act.WAIT, event, "server_error", until=time.time() + attempt)
        settlement = Settlement()
        logged = attempt_of(decision, 503, 0.01 * attempt, "host:1", time.time())
        settlement.park(entry, event, decision.until, "transient", logged)
        scripts.settle(settlement, HOUR_MS, (HOUR_MS, MONTH_MS))
        entry = event.to_json()
    # Then its log holds the last ten, oldest first, and expires with the live retention
    log = [Attempt.from_json(raw) for raw in redis_client.lrange(KEYS.attempts(event_id), 0, -1)]
    assert [a.seconds for a in log] == [round(0.01 * n, 4) for n in range(2, 12)]
    assert {(a.status, a.decision, a.why, a.worker) for a in log} == {
        (503, "wait", "server_error", "host:1")
    }
    assert 0 < redis_client.pttl(KEYS.attempts(event_id)) <= HOUR_MS


def test_only_goals_with_a_failed_attempt_log_a_delivery_or_a_hold() -> None:
    fresh = GoalEvent("e", "v", "signup", time.time())
    tried = fresh.attempted(time.time(), 503, "HTTP 503")
    for event in (fresh, tried):
        delivered = attempt_of(Decision(Act.DELIVERED, event), 200, 0.1, "w", 1.0)
        held = attempt_of(Decision(Act.HOLD, event, "pace", until=2.0), None, None, "w", 1.0)
        assert bool(delivered) is bool(held) is (event is tried)
    pause = Pause("rate_limited", 60.0, 59.0, 0, True)
    paused = attempt_of(Decision(Act.WAIT, tried, "rate_limited", pause=pause), 429, 0.1, "w", 1)
    assert (Attempt.from_json(paused).decision, Attempt.from_json(paused).until) == ("pause", 60)


def test_a_delivered_goals_log_lives_as_long_as_its_marker(
    redis_client: redis.Redis, queue: GoalQueue
) -> None:
    event_id = queue.track_goal("v", "signup")
    (entry,) = redis_client.zrange(KEYS.ledger, 0, -1)
    tried = GoalEvent.from_json(entry).attempted(time.time(), 503, "HTTP 503")
    settlement = Settlement()
    logged = attempt_of(Decision(Act.DELIVERED, tried), 200, 0.1, "w", time.time())
    settlement.delivered(entry, event_id, "a" * 24, 0.2, logged)
    SweeperScripts(redis_client, KEYS).settle(settlement, HOUR_MS, (MONTH_MS, MONTH_MS))
    assert 0 < redis_client.pttl(KEYS.attempts(event_id)) <= HOUR_MS
