"""End to end: track_goal -> Redis -> real `celery -A workers worker` processes -> the sandbox."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.deadletters import DeadLetters
from goalqueue.keys import TASK_NAME
from goalqueue.sandbox import Sandbox
from tests.helpers.messages import pop_message
from tests.helpers.scheduling import TIMED
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers


def accepted_keys(sandbox: Sandbox) -> set[str | None]:
    return {event.idempotency_key for event in sandbox.events(status=200)}


def test_good_goals_are_delivered_and_permanent_failures_dead_lettered_after_one_request(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a sandbox that knows one visitor and one bot
    sandbox.register_visitors("known", mode="registered")
    sandbox.add_bots("bot")
    workers.start("-c", "4")
    # When the app tracks good goals, a bot's goal and an unknown visitor's goal
    good = [queue.track_goal("known", "signup", metadata={"n": i}) for i in range(20)]
    bot = queue.track_goal("bot", "signup")
    unknown = queue.track_goal("stranger", "signup")
    # Then the good ones are delivered and the others are dead letters
    wait_for(lambda: set(good) <= accepted_keys(sandbox))
    letters = DeadLetters(redis_client, KEYS)
    wait_for(lambda: redis_client.hlen(KEYS.dead) == 2)
    assert (letters.get(bot).reason, letters.get(bot).status_code) == ("bad_request", 400)  # type: ignore[union-attr]
    assert letters.get(unknown).status_code == 404  # type: ignore[union-attr]
    # And each dead letter cost exactly one request
    requests = [event.idempotency_key for event in sandbox.events()]
    assert requests.count(bot) == 1 and requests.count(unknown) == 1
    # And the worker records all 20 (DataFast's answers are recorded just after it gives them)
    wait_for(lambda: redis_client.get(KEYS.delivered_count) == "20", 5)


def test_a_429_with_retry_after_is_delivered_after_the_wait(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers
) -> None:
    sandbox.fail_next(429, count=1, retry_after=1)
    workers.start("-c", "4")
    event_id = queue.track_goal("v", "upgrade")
    (ok,) = sandbox.wait_for_events(1, status=200, timeout=30)
    (limited,) = sandbox.events(status=429)
    assert ok.idempotency_key == limited.idempotency_key == event_id
    assert ok.time - limited.time >= 1.0


def test_a_run_of_503s_is_delivered_afterwards(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers
) -> None:
    sandbox.fail_next(503, count=15)
    workers.start("-c", "4")
    ids = [queue.track_goal(f"v{i}", "purchase") for i in range(5)]
    wait_for(lambda: set(ids) <= accepted_keys(sandbox))
    assert len(sandbox.events(status=503)) == 15
    assert sandbox.stats().duplicates == 0


def test_a_worker_delivers_a_backlog_through_claims_each_goal_once(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a backlog of 300 goals
    ids = set(queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(300)]))
    # When a worker with the default settings drains it
    worker = workers.start()
    # Then every goal is delivered once, most of them claimed by tasks rather than each
    # received as a task message of its own
    wait_for(lambda: ids <= accepted_keys(sandbox))
    assert sandbox.stats().duplicates == 0
    wait_for(lambda: redis_client.get(KEYS.delivered_count) == "300")
    assert worker.output().count(f"Task {TASK_NAME}[") < 2 * 100
    assert redis_client.zcard(KEYS.ledger) == 0


def test_a_goal_taken_by_a_worker_killed_right_after_brpop_is_still_delivered(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a goal whose message left the queue and vanished, as when a worker is killed between
    # kombu's BRPOP and its unacked bookkeeping
    lost = queue.track_goal("v", "signup")
    assert pop_message(redis_client)[0] == lost
    assert redis_client.llen(KEYS.queue) == 0
    # When delivery goes on with later goals
    workers.start("-c", "2")
    later = queue.track_goal("v", "signup")
    # Then the lost goal is delivered too, once
    wait_for(lambda: {lost, later} <= accepted_keys(sandbox))
    assert sandbox.stats().duplicates == 0


class Producer(threading.Thread):
    """A web app enqueuing goals at a steady rate (``per_tick`` every 10 ms) until stopped."""

    def __init__(self, queue: GoalQueue, per_tick: int) -> None:
        super().__init__(daemon=True)
        self.queue, self.per_tick = queue, per_tick
        self.ids: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self.done.wait(0.01):  # the app's pace, not a wait for a condition
            goals = [{"visitor_id": f"v{tick}-{i}", "name": "signup"} for i in range(self.per_tick)]
            self.ids.update(self.queue.track_goals(goals))
            tick += 1


@TIMED
def test_workers_sigkilled_again_and_again_lose_no_goal(
    queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given goals enqueued at a steady 200 a second, delivered by two workers through an
    # endpoint that answers in 50 ms
    sandbox.set_faults(latency_ms=50)
    live = [workers.start(), workers.start()]
    producer = Producer(queue, per_tick=2)
    producer.start()
    # When a worker is SIGKILLed five times while goals flow, each time replaced by one that is
    # up and running before the next kill
    rng = random.Random(7)
    floors = []
    for _ in range(5):
        accepted = sandbox.stats().accepted
        wait_for(lambda accepted=accepted: sandbox.stats().accepted >= accepted + 200, 30)
        time.sleep(rng.uniform(0, 0.1))  # a random moment in the flow, not a wait for a condition
        victim = rng.choice(live)
        # (what DataFast is still processing: it will accept those, and they will be sent again)
        floors.append(sandbox.stats().in_flight)
        victim.kill()
        live.remove(victim)
        live.append(workers.start())
    producer.done.set()
    producer.join()
    # Then every goal is delivered
    wait_for(lambda: producer.ids <= accepted_keys(sandbox), timeout=120)
    stats = sandbox.stats()
    assert stats.distinct_keys == len(producer.ids)
    wait_for(lambda: redis_client.zcard(KEYS.ledger) == 0, timeout=30)
    assert redis_client.zcard(KEYS.waiting) == 0
    assert redis_client.hlen(KEYS.dead) == 0
    # And DataFast saw a goal twice only for requests it was processing at a kill, or at most
    # two answers per kill that a worker had received and not yet recorded
    assert stats.duplicates <= sum(floors) + 2 * len(floors), (stats.duplicates, floors)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DATAFAST_API_KEY is not set"),
        ({"DATAFAST_API_KEY": "dft_token"}, "DATAFAST_WEBSITE_ID is not set"),
    ],
)
def test_a_worker_without_credentials_refuses_to_start(
    redis_url: str, env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATAFAST_", "GOALQUEUE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--without-mingle"],
        env={**clean, "GOALQUEUE_BROKER_URL": redis_url, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
