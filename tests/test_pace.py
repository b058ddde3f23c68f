"""The shared pace: a token bucket in Redis that TAKE draws from, started by a 429, a timeout
after sending or GOALQUEUE_MAX_RATE, halved by either (DEFER) and grown while it holds delivery
back.

The scripts run on the real Redis with a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.message import template
from goalqueue.sandbox import Sandbox
from tests.helpers.messages import pop_message
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers
from workers.scripts import Bound, Defer, WorkerScripts

NOW = 1_800_000_000.0


class Pace:
    """TAKE and DEFER as a worker calls them, at moments the test chooses, on an event loop of
    the test's own."""

    def __init__(self, settings: Settings, client: redis.Redis, max_rate: float = 0) -> None:
        self.settings = settings
        self.client = client
        self.max_rate = max_rate
        self.loop = asyncio.new_event_loop()
        self.worker_client = redis.asyncio.Redis.from_url(
            settings.broker_url, decode_responses=True
        )
        bound = Bound(settings.key_fingerprint, 1000, max_rate, 0, (0, 0))
        self.scripts = WorkerScripts(self.worker_client, KEYS, bound)

    def close(self) -> None:
        self.loop.run_until_complete(self.worker_client.aclose())
        self.loop.close()

    def take(self, now: float, claim: int = 100, patient: bool = True) -> tuple[int, list[str]]:
        """TAKE the next queued goal and claim up to ``claim`` more: (wait ms, standings)."""
        event_id, seq = pop_message(self.client)
        take = self.loop.run_until_complete(
            self.scripts.take(now, goal=(event_id, seq), claim=claim, patient=patient)
        )
        if not take.copies:  # no token yet: the task's goal goes back where it was
            self.client.rpush(KEYS.queue, template(KEYS) % (seq, event_id, seq))
        return round(take.wait * 1000), [copy.standing.value for copy in take.copies]

    def sends(self, now: float, claim: int = 100) -> int:
        """How many goals one TAKE at ``now`` lets out."""
        return self.take(now, claim)[1].count("send")

    def rate_limited(self, now: float) -> str | None:
        """A 429 answer's DEFER, as the worker records it: the new rate, if it changed."""
        return self.loop.run_until_complete(self._defer(now, "rate_limited"))

    def slow(self, now: float) -> str | None:
        """A timeout after sending's DEFER, as the worker records it."""
        return self.loop.run_until_complete(self._defer(now, "slow"))

    async def _defer(self, now: float, reason: str) -> str | None:
        await self.scripts.load()
        async with self.worker_client.pipeline(transaction=False) as pipe:
            self.scripts.defer(Defer(now + 1, reason, 0, halve=True), now, pipe)
            (reply,) = await pipe.execute()
        return None if reply is None else str(reply)

    def resume(self) -> None:
        self.client.delete(KEYS.pause, KEYS.probe)

    def rate(self) -> float:
        return float(self.client.hget(KEYS.pace, "rate") or 0)

    def busy(self, seconds: range) -> list[float]:
        """Ten TAKEs a second through ``seconds``, a backlog keeping the pace busy; the rate at
        the end of each second."""
        rates = []
        for second in seconds:
            for tick in range(10):
                self.sends(NOW + second + tick / 10)
            rates.append(self.rate())
        return rates


@pytest.fixture
def make_pace(settings: Settings, redis_client: redis.Redis) -> Iterator[Callable[..., Pace]]:
    """``pace(max_rate=0)``: a Pace on the test Redis, closed after the test."""
    made: list[Pace] = []

    def make(max_rate: float = 0) -> Pace:
        made.append(Pace(settings, redis_client, max_rate))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.fixture
def backlog(queue: GoalQueue) -> list[str]:
    return queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(2000)])


def test_without_a_429_or_a_cap_there_is_no_pace(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    pace = make_pace()
    assert pace.sends(NOW, claim=255) == 256
    assert not redis_client.exists(KEYS.pace)


def test_max_rate_caps_what_every_take_together_lets_out(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    # Given a cap of 50 goals/s for the deployment
    pace = make_pace(max_rate=50)
    # When workers TAKE again and again, twenty times a second for ten seconds
    sent = sum(pace.sends(NOW + i / 20) for i in range(200))
    # Then no more than 50/s went out (plus the first burst of a tenth of a second)
    assert 480 <= sent <= 50 * 10 + 5
    assert pace.rate() == 50


def test_a_take_without_a_token_waits_and_changes_nothing(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    pace = make_pace(max_rate=10)
    assert pace.sends(NOW) == 1  # the burst: one token at 10/s
    queued, taken = redis_client.llen(KEYS.queue), redis_client.get(KEYS.taken)
    # When the next TAKE comes before the next token
    wait, verdicts = pace.take(NOW + 0.05)
    # Then it is told how long to wait, and nothing moved
    assert verdicts == [] and 45 <= wait <= 55
    assert redis_client.llen(KEYS.queue) == queued and redis_client.get(KEYS.taken) == taken
    # And an impatient TAKE (a worker shutting down, or waiting too long) holds the goal instead
    assert pace.take(NOW + 0.05, patient=False)[1] == ["hold"]
    # While one a token later sends it
    assert pace.take(NOW + 0.1)[1] == ["send"]


def test_a_429_starts_a_slow_pace_that_grows_while_it_holds_delivery_back(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    pace = make_pace()
    # Given a first 429: delivery pauses, and sending will resume at 10 goals/s
    assert pace.rate_limited(NOW) == "10"
    # And more 429s from the same rush while paused change nothing
    assert pace.rate_limited(NOW + 0.1) is None
    pace.resume()
    # When the backlog keeps the pace busy, second after second
    rates = pace.busy(range(1, 6))
    # Then the rate doubles every second (no 429 has shown where the limit is yet)
    assert rates == [10, 20, 40, 80, 160]


def test_another_429_halves_the_pace_and_growth_slows_near_that_limit(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    pace = make_pace()
    pace.rate_limited(NOW)
    pace.resume()
    pace.busy(range(1, 4))
    assert pace.rate() == 40
    # When DataFast answers 429 at 40 goals/s
    assert pace.rate_limited(NOW + 4) == "20"
    pace.resume()
    # Then the pace restarts at half, and grows by a tenth a second from there
    rates = [round(rate, 2) for rate in pace.busy(range(5, 8))]
    assert rates == [20, 22, 24.2]


def test_a_timeout_after_sending_halves_the_pace_without_marking_a_limit(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    # Given a pace that a 429 at 40 goals/s halved, growing by a tenth a second near that limit
    pace = make_pace()
    pace.rate_limited(NOW)
    pace.resume()
    pace.busy(range(1, 4))
    assert pace.rate_limited(NOW + 4) == "20"
    pace.resume()
    assert [round(rate, 2) for rate in pace.busy(range(5, 7))] == [20, 22]
    # When a request times out after sending (DataFast is slow)
    assert pace.slow(NOW + 7) == "11"
    pace.resume()
    # Then the pace restarts at half, and grows back doubling up to half the 429's rate, then
    # by a tenth: a timeout says nothing about the rate that drew it, the 429's limit stands
    assert [round(rate, 2) for rate in pace.busy(range(8, 11))] == [11, 22, 24.2]


def test_a_first_timeout_after_sending_starts_a_pace_that_grows_from_a_start(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    # Given workers sending about 200 goals/s, and no pace yet
    pace = make_pace()
    assert pace.sends(NOW - 0.5) == 101
    # When a request times out after sending, the pace starts at half that rate
    assert pace.slow(NOW) == "101"
    pace.resume()
    # Then it doubles every second while it holds goals back: the rate the workers sent at
    # while their requests hung is no limit to stay under
    assert pace.busy(range(1, 4)) == [101, 202, 404]


def test_a_pace_that_holds_nothing_back_does_not_grow(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    pace = make_pace()
    pace.rate_limited(NOW)
    pace.resume()
    # When goals trickle in slower than the pace allows, one TAKE a second, claiming nothing
    for second in range(1, 6):
        pace.sends(NOW + second, claim=0)
    # Then the rate stays where it was: growing it would only make the next rush worse
    assert pace.rate() == 10


def test_a_429_under_a_cap_halves_below_the_cap(
    redis_client: redis.Redis, backlog: list[str], make_pace: Callable[..., Pace]
) -> None:
    pace = make_pace(max_rate=100)
    pace.sends(NOW)
    assert pace.rate_limited(NOW + 1) == "50"
    pace.resume()
    pace.busy(range(2, 12))
    assert 50 < pace.rate() <= 100


def test_a_backlog_drains_through_a_rate_limit_with_few_429s_after_the_first(
    settings: Settings, queue: GoalQueue, sandbox: Sandbox, workers: Workers
) -> None:
    # Given DataFast letting 300 goals a second through, and a backlog of 2,000
    sandbox.set_faults(rate_limit={"per_second": 300, "retry_after": 1})
    ids = set(queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(2000)]))
    # When two workers drain it
    workers.start()
    workers.start()
    wait_for(lambda: ids <= {e.idempotency_key for e in sandbox.events(status=200)}, 60)
    # Then every goal got through once; the first rush drew a storm of 429s, but after it the
    # shared pace kept them few (without it, about ten times as many: see the README)
    assert sandbox.stats().duplicates == 0
    refused = [e.time for e in sandbox.events(status=429)]
    assert refused, "the rate limit never bit"
    after_the_first_storm = [t for t in refused if t > refused[0] + 1.5]
    assert len(after_the_first_storm) <= 0.05 * len(ids), len(after_the_first_storm)
