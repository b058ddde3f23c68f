"""A DataFast that lies or stalls, end to end: real ``celery -A workers worker`` processes, the
real Redis, and the sandbox answering 200 with an HTML page, or accepting goals only after the
workers' HTTP timeout. Short forms of issue 16's reproductions: small timeouts, a few goals.
"""

from __future__ import annotations

from collections import Counter

import redis

from goalqueue import GoalQueue
from goalqueue.deadletters import DeadLetters
from goalqueue.sandbox import Sandbox
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers

CAP = 3


def counted(client: redis.Redis, field: str) -> int:
    return int(client.hget(KEYS.metrics, field) or 0)


def test_a_200_with_html_is_not_delivered_and_ends_as_an_unexpected_response(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a URL where something in front of DataFast answers every goal 200 with a page
    sandbox.set_faults(odd_answer="html")
    workers.start("-c", "2", env={"GOALQUEUE_MAX_UNKNOWN_ATTEMPTS": str(CAP)})
    # When the app tracks goals
    ids = {queue.track_goal(f"v{i}", "signup") for i in range(5)}
    # Then none is counted delivered: each is tried the capped number of times, then
    # dead-lettered as an unexpected response that keeps the start of the page
    wait_for(lambda: redis_client.hlen(KEYS.dead) == len(ids), 30)
    letters = list(DeadLetters(redis_client, KEYS))
    assert {letter.event_id for letter in letters} == ids
    for letter in letters:
        assert (letter.reason, letter.status_code, letter.attempts) == (
            "unexpected_response",
            200,
            CAP,
        )
        assert "<!doctype html>" in (letter.error or "")
    sent = Counter(event.idempotency_key for event in sandbox.events())
    assert sent == dict.fromkeys(ids, CAP)
    assert sandbox.stats().accepted == 0
    # And the counters say so
    assert redis_client.get(KEYS.delivered_count) is None
    assert counted(redis_client, "answers:2xx") == 0
    assert counted(redis_client, "answers:unexpected_2xx") == CAP * len(ids)
    assert counted(redis_client, "dead:unexpected_response") == len(ids)


def test_a_slow_datafast_that_accepts_gets_each_goal_at_most_the_capped_times(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a DataFast that accepts every goal, but only after the workers' HTTP timeout
    sandbox.set_faults(latency_ms=500)
    env = {
        "GOALQUEUE_HTTP_TIMEOUT_SECONDS": "0.2",
        "GOALQUEUE_RETRY_MAX_SECONDS": "0.2",  # the longest pause between probes
        "GOALQUEUE_MAX_UNKNOWN_ATTEMPTS": str(CAP),
    }
    workers.start("-c", "2", env=env)
    # When the app tracks goals
    ids = {queue.track_goal(f"v{i}", "signup") for i in range(4)}
    # Then each goal is sent at most the capped number of times, then dead-lettered as maybe
    # delivered (not expired): DataFast has them all, and a replay would be a visible choice
    wait_for(lambda: redis_client.hlen(KEYS.dead) == len(ids), 60)
    wait_for(lambda: sandbox.stats().in_flight == 0, 5)
    letters = list(DeadLetters(redis_client, KEYS))
    assert {(letter.event_id, letter.reason) for letter in letters} == {
        (event_id, "maybe_delivered") for event_id in ids
    }
    stats = sandbox.stats()
    assert stats.distinct_keys == len(ids)
    accepted = Counter(event.idempotency_key for event in sandbox.events(status=200))
    assert max(accepted.values()) <= CAP
    assert stats.duplicates <= (CAP - 1) * len(ids)
    # And the workers paused for everyone while DataFast was slow, and counted every timeout
    assert counted(redis_client, "deferred:slow") >= 1
    assert counted(redis_client, "answers:timeout_after_send") == stats.total
    assert counted(redis_client, "dead:maybe_delivered") == len(ids)
