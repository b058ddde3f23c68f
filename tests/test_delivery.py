"""One goal through the delivery path: real Redis, DataFast faked with httpx.MockTransport."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace

import httpx
import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetters
from goalqueue.event import GoalEvent
from tests.helpers.datafast import FakeDataFast, error, ok
from tests.helpers.markers import mark, marker
from tests.helpers.messages import pop_message
from tests.helpers.settings import API_KEY, KEYS
from workers.engine import Engine
from workers.sweeper import Sweeper

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
Handler = Callable[[httpx.Request], httpx.Response]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def deliverer(
    engines: Callable[..., Engine], clock: Clock
) -> Callable[[Settings, Handler], Engine]:
    """A worker's engine that takes one goal at a time (no claims), on the test's clock."""

    def start(settings: Settings, handler: Handler, clock: Clock = clock) -> Engine:
        one_at_a_time = replace(settings, max_in_flight=1)
        return engines(one_at_a_time, handler, clock=clock, rand=lambda: 1.0)

    return start


def run_next(worker: Engine, client: redis.Redis) -> str:
    """What a worker does with the next message on the queue."""
    return worker.run(*pop_message(client)).summary


@pytest.fixture
def clock(queue: GoalQueue) -> Clock:
    return Clock(1e10)


def enqueue(queue: GoalQueue, clock: Clock, name: str = "signup") -> str:
    event_id = queue.track_goal(VISITOR, name, metadata={"plan": "pro"})
    clock.now = _enqueued_at(queue.redis, event_id)
    return event_id


def _enqueued_at(client: redis.Redis, event_id: str) -> float:
    for raw in client.zrange(KEYS.ledger, 0, -1):
        event = GoalEvent.from_json(raw)
        if event.event_id == event_id:
            return event.enqueued_at
    raise AssertionError("not in the ledger")


def test_a_delivered_goal_is_posted_once_with_auth_and_idempotency_key(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a queued goal
    event_id = enqueue(queue, clock)
    api = FakeDataFast(ok())
    # When a worker delivers it
    assert run_next(deliverer(settings, api, clock), redis_client) == "delivered"
    # Then DataFast saw one authenticated request carrying the event id
    (request,) = api.requests
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["idempotency-key"] == event_id
    assert json.loads(request.content) == {
        "datafast_visitor_id": VISITOR,
        "name": "signup",
        "metadata": {"plan": "pro"},
    }
    # And the goal is settled: marker set, counted, nothing left waiting
    assert (found := marker(redis_client, event_id)) is not None
    assert found.remote_id == "e" * 24
    assert redis_client.get(KEYS.delivered_count) == "1"
    assert redis_client.zcard(KEYS.ledger) == 0
    assert redis_client.zcard(KEYS.waiting) == 0


def test_an_outcome_is_recorded_after_redis_lost_its_scripts(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a worker that has delivered and recorded a goal (its scripts are loaded)
    worker = deliverer(settings, FakeDataFast(ok()), clock)
    first = enqueue(queue, clock)
    assert run_next(worker, redis_client) == "delivered"
    # When Redis loses its scripts (a restart, a failover) before the next outcome is written
    second = enqueue(queue, clock)
    redis_client.script_flush()
    # Then the next goal is still delivered and recorded: the write loads them again
    assert run_next(worker, redis_client) == "delivered"
    assert marker(redis_client, first) is not None and marker(redis_client, second) is not None
    assert redis_client.get(KEYS.delivered_count) == "2"
    assert redis_client.zcard(KEYS.ledger) == 0


def test_a_dft_token_sends_the_website_id(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    enqueue(queue, clock)
    api = FakeDataFast()
    token = replace(settings, api_key="dft_token", website_id="site-1")
    run_next(deliverer(token, api, clock), redis_client)
    assert api.requests[0].url.params["websiteId"] == "site-1"
    assert api.requests[0].headers["authorization"] == "Bearer dft_token"


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "bad_request"), (404, "unknown_visitor"), (422, "client_error")]
)
def test_a_permanent_failure_is_dead_lettered_after_one_request(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    status: int,
    reason: str,
    deliverer: Callable[..., Engine],
) -> None:
    event_id = enqueue(queue, clock)
    api = FakeDataFast(error(status, "visitor has no pageviews"))
    worker = deliverer(settings, api, clock)

    assert run_next(worker, redis_client) == f"dead ({reason})"
    Sweeper(settings, redis_client).sweep_once(clock.now + 3600)

    assert len(api.requests) == 1
    letter = DeadLetters(redis_client, KEYS).get(event_id)
    assert letter is not None and letter.event is not None
    assert (letter.reason, letter.status_code, letter.attempts) == (reason, status, 1)
    assert letter.error == "visitor has no pageviews"
    assert letter.event.visitor_id == VISITOR
    assert redis_client.llen(KEYS.queue) == 0
    assert redis_client.zcard(KEYS.ledger) + redis_client.zcard(KEYS.waiting) == 0


def test_a_server_error_waits_with_backoff_then_is_delivered(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    event_id = enqueue(queue, clock)
    api = FakeDataFast(error(503), error(502))
    worker = deliverer(settings, api, clock)
    sweeper = Sweeper(settings, redis_client)

    # First attempt: 503, waits base * 2**0 (rand pinned to 1.0)
    assert run_next(worker, redis_client) == "waiting (server_error)"
    ((_, due),) = redis_client.zrange(KEYS.waiting, 0, -1, withscores=True)
    assert due == pytest.approx(clock.now + settings.retry_base_seconds)
    assert sweeper.sweep_once(due - 0.01) == (0, 0)
    assert sweeper.sweep_once(due) == (1, 0)
    # Second attempt: 502, waits twice as long
    assert run_next(worker, redis_client) == "waiting (server_error)"
    ((raw, due2),) = redis_client.zrange(KEYS.waiting, 0, -1, withscores=True)
    assert due2 == pytest.approx(clock.now + 2 * settings.retry_base_seconds)
    assert GoalEvent.from_json(raw).attempts == 2
    sweeper.sweep_once(due2)
    # Third attempt succeeds, same event id throughout
    assert run_next(worker, redis_client) == "delivered"
    assert {r.headers["idempotency-key"] for r in api.requests} == {event_id}
    assert len(api.requests) == 3


def test_a_refused_connection_is_transient_and_named(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given DataFast refusing connections (httpx's own error, as from any transport)
    enqueue(queue, clock)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    # When a worker tries the goal, it waits for a retry, named for what went wrong
    result = run_next(deliverer(settings, refuse, clock), redis_client)
    assert result == "waiting (connection_refused)"
    (raw,) = redis_client.zrange(KEYS.waiting, 0, -1)
    event = GoalEvent.from_json(raw)
    assert (event.last_error or "").startswith("connection_refused: ConnectError")
    # And DataFast cannot have it: no unknown attempt, no pause
    assert event.unknown_attempts == 0
    assert not redis_client.exists(KEYS.pause)
    assert redis_client.hget(KEYS.metrics, "answers:connection_refused") == "1"


def timeout_after_send(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def test_a_timeout_after_sending_pauses_everyone_and_slows_the_pace(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a goal whose request times out after it was sent
    enqueue(queue, clock)
    # When a worker tries it
    result = run_next(deliverer(settings, timeout_after_send, clock), redis_client)
    # Then DataFast is taken to be slow: delivery pauses for everyone, the shared pace starts
    assert result == "waiting (slow)"
    assert redis_client.hget(KEYS.pause, "reason") == "slow"
    assert redis_client.exists(KEYS.pace)
    # And the goal waits with one unknown attempt (DataFast may have it)
    (raw,) = redis_client.zrange(KEYS.waiting, 0, -1)
    event = GoalEvent.from_json(raw)
    assert (event.attempts, event.unknown_attempts) == (1, 1)
    assert (event.last_error or "").startswith("timeout_after_send: ReadTimeout")
    counted = redis_client.hgetall(KEYS.metrics)
    assert counted["answers:timeout_after_send"] == counted["deferred:slow"] == "1"


def test_unknown_outcomes_are_capped_then_dead_lettered_as_maybe_delivered(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a cap of two attempts whose outcome is unknown, and a DataFast that never answers
    capped = replace(settings, max_unknown_attempts=2)
    event_id = enqueue(queue, clock)
    worker = deliverer(capped, timeout_after_send, clock)
    sweeper = Sweeper(capped, redis_client)
    # When the goal times out after sending once, it waits for the pause to end
    assert run_next(worker, redis_client) == "waiting (slow)"
    clock.now = float(redis_client.hget(KEYS.pause, "until") or 0)
    assert sweeper.sweep_once(clock.now) == (1, 0)
    # Then after the second, it is given up on as maybe delivered, not sent a third time
    assert run_next(worker, redis_client) == "dead (maybe_delivered)"
    letter = DeadLetters(redis_client, KEYS).get(event_id)
    assert letter is not None and letter.event is not None
    assert (letter.reason, letter.attempts, letter.event.unknown_attempts) == (
        "maybe_delivered",
        2,
        2,
    )
    assert redis_client.zcard(KEYS.waiting) + redis_client.zcard(KEYS.ledger) == 0
    assert redis_client.hget(KEYS.metrics, "dead:maybe_delivered") == "1"


def test_a_probe_that_expired_lets_the_next_goal_probe_at_once(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given two goals waiting out a pause (DataFast slow), both past their maximum age by then
    first, second = enqueue(queue, clock), enqueue(queue, clock)
    worker = deliverer(settings, timeout_after_send, clock)
    sweeper = Sweeper(settings, redis_client)
    assert run_next(worker, redis_client) == "waiting (slow)"
    assert run_next(worker, redis_client) == "held (paused)"
    clock.now += settings.max_age_seconds + 1
    # When the first is taken as the probe, it is dead-lettered without a request
    assert sweeper.sweep_once(clock.now) == (1, 0)
    assert run_next(worker, redis_client) in ("dead (maybe_delivered)", "dead (expired)")
    # Then the next goal may probe at once, not after the probe's lease
    assert sweeper.sweep_once(clock.now) == (1, 0)
    assert run_next(worker, redis_client) in ("dead (maybe_delivered)", "dead (expired)")
    reasons = {letter.event_id: letter.reason for letter in DeadLetters(redis_client, KEYS)}
    assert reasons == {first: "maybe_delivered", second: "expired"}


def test_a_replayed_letter_gets_its_unknown_attempts_back(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a goal dead-lettered after its one allowed unknown attempt
    event_id = enqueue(queue, clock)
    once = replace(settings, max_unknown_attempts=1)
    assert (
        run_next(deliverer(once, timeout_after_send, clock), redis_client)
        == "dead (maybe_delivered)"
    )
    # When the operator replays it
    assert DeadLetters(redis_client, KEYS).replay([event_id]) == ([event_id], [])
    # Then it starts again with no unknown attempt
    (raw,) = redis_client.zrange(KEYS.ledger, 0, -1)
    assert GoalEvent.from_json(raw).unknown_attempts == 0


def test_an_unexpected_2xx_is_retried_then_dead_lettered_with_the_body(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a URL that answers 200 with an HTML page, and a cap of two unknown attempts
    capped = replace(settings, max_unknown_attempts=2)
    event_id = enqueue(queue, clock)
    page = httpx.Response(200, text="<html><body>Log in to the network</body></html>")
    api = FakeDataFast(page, page)
    worker = deliverer(capped, api, clock)
    # When it is tried, it is not delivered but retried after backoff
    assert run_next(worker, redis_client) == "waiting (unexpected_response)"
    assert marker(redis_client, event_id) is None
    ((_, due),) = redis_client.zrange(KEYS.waiting, 0, -1, withscores=True)
    Sweeper(capped, redis_client).sweep_once(due)
    # Then the second such answer dead-letters it, with what the body began with
    assert run_next(worker, redis_client) == "dead (unexpected_response)"
    letter = DeadLetters(redis_client, KEYS).get(event_id)
    assert letter is not None
    assert (letter.reason, letter.status_code, letter.attempts) == ("unexpected_response", 200, 2)
    assert "<html><body>Log in" in (letter.error or "")
    counted = redis_client.hgetall(KEYS.metrics)
    assert counted["answers:unexpected_2xx"] == "2"
    assert counted["dead:unexpected_response"] == "1"
    assert redis_client.get(KEYS.delivered_count) is None


def test_a_429_pauses_everyone_then_a_single_probe_resumes_delivery(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given three goals and an API that rate-limits the first request for 2 s
    first, second, third = (enqueue(queue, clock) for _ in range(3))
    api = FakeDataFast(error(429, "slow down", **{"Retry-After": "2"}))
    worker = deliverer(settings, api, clock)
    sweeper = Sweeper(settings, redis_client)

    # When the first is rate-limited, delivery pauses for 2 s
    assert run_next(worker, redis_client) == "waiting (rate_limited)"
    assert float(redis_client.hget(KEYS.pause, "until") or 0) == pytest.approx(clock.now + 2)
    # Then the others wait without an HTTP call
    assert run_next(worker, redis_client) == "held (paused)"
    assert run_next(worker, redis_client) == "held (paused)"
    assert len(api.requests) == 1
    assert redis_client.zcard(KEYS.waiting) == 3
    # And before the pause ends nothing moves; after it, exactly one probe goes out
    assert sweeper.sweep_once(clock.now + 1.9) == (0, 0)
    clock.now += 2
    assert sweeper.sweep_once(clock.now) == (1, 0)
    assert sweeper.sweep_once(clock.now) == (0, 0)
    assert run_next(worker, redis_client) == "delivered"
    # When the probe is accepted the pause lifts and the rest flow, at the shared pace that
    # starts after a 429: one goal per token, a token every tenth of a second
    assert not redis_client.exists(KEYS.pause)
    assert sweeper.sweep_once(clock.now) == (2, 0)
    for _ in range(2):
        clock.now += 0.1
        assert run_next(worker, redis_client) == "delivered"
    delivered = {r.headers["idempotency-key"] for r in api.requests[1:]}
    assert delivered == {first, second, third}


def test_a_pause_without_retry_after_grows_with_backoff(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    enqueue(queue, clock)
    api = FakeDataFast(error(403), error(403), error(403))
    worker = deliverer(settings, api, clock)
    sweeper = Sweeper(settings, redis_client)
    lengths = []
    for _ in range(3):
        start = clock.now
        assert run_next(worker, redis_client) == "waiting (suspended)"
        until = float(redis_client.hget(KEYS.pause, "until") or 0)
        lengths.append(round(until - start, 3))
        clock.now = until
        assert sweeper.sweep_once(clock.now) == (1, 0)
    base = settings.retry_base_seconds
    assert lengths == [base, 2 * base, 4 * base]
    assert run_next(worker, redis_client) == "delivered"


def test_a_401_pauses_loudly_and_a_new_key_resumes_at_once(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a worker with a wrong key
    event_id = enqueue(queue, clock)
    api = FakeDataFast(error(401, "invalid token"))
    with caplog.at_level(logging.ERROR):
        assert run_next(deliverer(settings, api, clock), redis_client) == "waiting (auth)"
    assert "DATAFAST_API_KEY" in caplog.text
    assert redis_client.hget(KEYS.pause, "reason") == "auth"
    assert DeadLetters(redis_client, KEYS).get(event_id) is None
    # When a worker with a fixed key starts sweeping, the pause for the old key is dropped
    fixed = replace(settings, api_key="df_fixed")
    assert Sweeper(fixed, redis_client).sweep_once(clock.now) == (1, 0)
    assert not redis_client.exists(KEYS.pause)
    # Then the goal goes out at once, with the new key
    assert run_next(deliverer(fixed, api, clock), redis_client) == "delivered"
    assert api.requests[-1].headers["authorization"] == "Bearer df_fixed"


def test_a_redirect_pauses_loudly_and_a_worker_with_another_url_resumes_at_once(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a worker whose DATAFAST_API_URL answers with a redirect
    event_id = enqueue(queue, clock)
    moved = httpx.Response(301, headers={"Location": "https://datafa.st/api/v1/goals"})
    api = FakeDataFast(moved)
    with caplog.at_level(logging.ERROR):
        result = run_next(deliverer(settings, api, clock), redis_client)
    # Then delivery pauses for everyone with an operator-facing error, and keeps the goal
    assert result == "waiting (redirect)"
    assert "DATAFAST_API_URL" in caplog.text and "datafa.st" in caplog.text
    assert redis_client.hget(KEYS.pause, "reason") == "redirect"
    assert DeadLetters(redis_client, KEYS).get(event_id) is None
    # When a worker with another URL starts sweeping, the pause is dropped
    fixed = replace(settings, api_url="http://127.0.0.1:9/fixed")
    assert Sweeper(fixed, redis_client).sweep_once(clock.now) == (1, 0)
    assert not redis_client.exists(KEYS.pause)
    # Then the goal goes out at once, to the new URL
    assert run_next(deliverer(fixed, api, clock), redis_client) == "delivered"
    assert api.requests[-1].url.path == "/fixed"


@pytest.mark.parametrize(
    ("timed_out_before", "reason"), [(False, "expired"), (True, "maybe_delivered")]
)
def test_a_goal_older_than_the_maximum_age_is_dead_lettered_without_a_request(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
    timed_out_before: bool,
    reason: str,
) -> None:
    # Given a goal, maybe with an attempt that timed out after sending (DataFast may have it)
    event_id = enqueue(queue, clock)
    if timed_out_before:
        run_next(deliverer(settings, timeout_after_send, clock), redis_client)
    # When it is next taken after its maximum age
    clock.now += settings.max_age_seconds + 1
    Sweeper(settings, redis_client).sweep_once(clock.now)
    api = FakeDataFast()
    assert run_next(deliverer(settings, api, clock), redis_client) == f"dead ({reason})"
    # Then it is dead-lettered without a request: expired, or maybe delivered (not expired) if
    # DataFast may have it, so that a replay is a visible choice
    assert api.requests == []
    letter = DeadLetters(redis_client, KEYS).get(event_id)
    assert letter is not None and letter.reason == reason


def test_a_redelivered_copy_of_a_delivered_goal_is_not_posted_again(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a goal whose message kombu restored after it was delivered
    enqueue(queue, clock)
    raw = redis_client.lindex(KEYS.queue, 0)
    api = FakeDataFast()
    worker = deliverer(settings, api, clock)
    run_next(worker, redis_client)
    redis_client.rpush(KEYS.queue, raw)
    # When the copy is processed, nothing is sent
    assert run_next(worker, redis_client) == "stale copy"
    assert len(api.requests) == 1
    assert redis_client.get(KEYS.delivered_count) == "1"


def test_a_marked_goal_still_in_the_ledger_is_settled_without_a_request(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a goal delivered by a copy that died before settling its ledger entry
    event_id = enqueue(queue, clock)
    mark(redis_client, event_id, "x")
    api = FakeDataFast()
    assert run_next(deliverer(settings, api, clock), redis_client) == "already delivered"
    assert api.requests == []
    assert redis_client.zcard(KEYS.ledger) == 0


def test_an_unreadable_ledger_entry_is_dead_lettered_as_poison(
    settings: Settings,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    # Given a ledger entry that is not an event (though it names its message's event id), with
    # its message on the queue
    GoalQueue(settings=settings).enqueue_payloads([("evt-1", '{"i": "evt-1", "bogus": 1}')])
    api = FakeDataFast()
    assert run_next(deliverer(settings, api, clock), redis_client) == "dead (poison)"
    (letter,) = DeadLetters(redis_client, KEYS)
    assert letter.reason == "poison" and "bogus" in (letter.raw or "")
    assert api.requests == []
    assert redis_client.zcard(KEYS.ledger) == 0


def test_the_api_key_is_stored_nowhere_in_redis(
    settings: Settings,
    queue: GoalQueue,
    redis_client: redis.Redis,
    clock: Clock,
    deliverer: Callable[..., Engine],
) -> None:
    for _ in range(4):
        enqueue(queue, clock)
    api = FakeDataFast(ok(), error(400), error(429, **{"Retry-After": "1"}), error(401))
    worker = deliverer(settings, api, clock)
    for _ in range(4):
        run_next(worker, redis_client)
    dump = []
    for key in redis_client.scan_iter():
        dump.append(key)
        dump.append(repr(redis_client.dump(key)))
    assert API_KEY not in " ".join(dump)
