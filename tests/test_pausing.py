"""Pause and resume by hand: ``goalqueue pause`` / ``goalqueue resume`` against the real Redis,
real worker processes and the sandbox; the spans max age leaves out; the exporter's gauge."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from click.testing import CliRunner, Result

from goalqueue import GoalQueue, pausing
from goalqueue.cli import main
from goalqueue.config import get_settings
from goalqueue.metrics.collector import GoalQueueCollector
from goalqueue.pausing import parse_duration, paused_between, spans_of
from goalqueue.sandbox import Sandbox
from goalqueue.scripts import Scripts
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers

Run = Callable[..., Result]


@pytest.fixture
def run(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", redis_url)
    get_settings.cache_clear()

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


def accepted(sandbox: Sandbox) -> set[str | None]:
    return {event.idempotency_key for event in sandbox.events(status=200)}


def operator_gauge(client: redis.Redis) -> float:
    metrics = GoalQueueCollector(client, KEYS).collect()
    (paused,) = [metric for metric in metrics if metric.name == "goalqueue_paused"]
    (value,) = [s.value for s in paused.samples if s.labels == {"reason": "operator"}]
    return value


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1.5m", 90)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "10x", "0s", "-1m", "m", "", "1h30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_paused_between_counts_only_the_overlap() -> None:
    spans = spans_of("100.000:200.000 300.5:400")
    assert spans == ((100.0, 200.0), (300.5, 400.0))
    assert paused_between(spans, 150, 350) == 50 + 49.5
    assert paused_between(spans, 0, 50) == 0
    assert paused_between((), 0, 1000) == 0


@pytest.mark.parametrize("args", [["--for", "10x"], ["--for", "10"], ["--for", "0s"], ["--bogus"]])
def test_pause_usage_errors_change_nothing(
    run: Run, redis_client: redis.Redis, args: list[str]
) -> None:
    result = run("pause", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not redis_client.exists(KEYS.operator_pause)


def test_pause_update_resume_say_what_they_did(run: Run, redis_client: redis.Redis) -> None:
    # Not paused: resume says so and succeeds
    result = run("resume")
    assert (result.exit_code, result.output) == (0, "not paused by hand: nothing to resume\n")
    # Pause until resumed, with a reason
    result = run("pause", "--reason", "deploy 42")
    assert result.exit_code == 0
    assert result.output.startswith("paused by hand: reason 'deploy 42'")
    assert "until `goalqueue resume`" in result.output and "set by " in result.output
    stats = json.loads(run("stats", "--json").output)["paused_by_hand"]
    assert (stats["reason"], stats["until"]) == ("deploy 42", None)
    assert "reason 'deploy 42'" in run("stats").output
    assert operator_gauge(redis_client) == 1
    # Pausing again updates it, and says so; it keeps its start
    result = run("pause", "--for", "10m", "--reason", "deploy 43")
    assert result.output.startswith("pause updated: reason 'deploy 43'")
    assert "was: reason 'deploy 42'" in result.output and "(in 10m)" in result.output
    again = json.loads(run("stats", "--json").output)["paused_by_hand"]
    assert again["since"] == stats["since"] and again["until"] > time.time() + 590
    # A DataFast pause beside it is not ended by resume, and resume says it is still on
    redis_client.hset(KEYS.pause, mapping={"until": time.time() + 60, "reason": "rate_limited"})
    result = run("resume")
    assert result.output.startswith("resumed: the pause by hand is over")
    assert "DataFast's pause (rate_limited) is in force as well" in result.output
    assert redis_client.exists(KEYS.pause) and operator_gauge(redis_client) == 0
    assert json.loads(run("stats", "--json").output)["paused_by_hand"] is None
    # The ended pause is kept as a span for max age
    assert len(spans_of(str(redis_client.hget(KEYS.operator_pause, "spans") or ""))) == 1


def test_spans_stay_bounded(run: Run, redis_client: redis.Redis) -> None:
    for _ in range(20):
        run("pause")
        run("resume")
    assert len(spans_of(str(redis_client.hget(KEYS.operator_pause, "spans") or ""))) == 16


def test_a_span_is_kept_while_max_age_may_still_need_it(redis_client: redis.Redis) -> None:
    scripts, hour = Scripts(redis_client, KEYS), 3600.0

    def spans() -> tuple[tuple[float, float], ...]:
        return spans_of(str(redis_client.hget(KEYS.operator_pause, "spans") or ""))

    def pause(now: float) -> None:
        pausing.pause(scripts, now, until=None, reason="", by="t", max_age=hour)

    # A long pause is kept while less than max age of unpaused time follows it ...
    pause(1000)
    pausing.resume(scripts, 9000, hour)
    pause(9000 + hour - 1)
    assert spans() == ((1000, 9000),)
    pausing.resume(scripts, 20000, hour)
    assert spans() == ((1000, 9000), (9000 + hour - 1, 20000))
    # ... and dropped once more than max age of unpaused time has followed it
    pause(20000 + 2)
    assert spans() == ((9000 + hour - 1, 20000),)


def test_pause_holds_every_worker_and_resume_delivers_everything_even_past_max_age(
    run: Run, queue: GoalQueue, sandbox: Sandbox, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given a worker whose goals expire 2 s after their enqueue, started before the pause
    short = {"GOALQUEUE_MAX_AGE_SECONDS": "2"}
    workers.start("-c", "2", env=short)
    assert run("pause", "--reason", "test").exit_code == 0
    # When goals are tracked while paused, and a second worker starts after the pause
    first = [queue.track_goal(f"v{i}", "signup") for i in range(5)]
    workers.start("-c", "2", env=short)
    second = [queue.track_goal(f"w{i}", "signup") for i in range(5)]
    # Then the workers take them and hold them, sending nothing, for longer than max age
    wait_for(lambda: redis_client.zcard(KEYS.waiting) == 10 and not redis_client.llen(KEYS.queue))
    enqueued = time.time()
    wait_for(lambda: time.time() > enqueued + 3, 5)
    assert sandbox.events() == [] and redis_client.hlen(KEYS.dead) == 0
    # And after resume every goal is delivered once, none dead
    assert run("resume").exit_code == 0
    wait_for(lambda: set(first + second) <= accepted(sandbox), 20)
    assert sandbox.stats().duplicates == 0 and redis_client.hlen(KEYS.dead) == 0


def test_a_pause_for_a_while_ends_by_itself(
    run: Run, queue: GoalQueue, sandbox: Sandbox, workers: Workers
) -> None:
    workers.start("-c", "2")
    assert run("pause", "--for", "2s").exit_code == 0
    until = time.time() + 2
    ids = [queue.track_goal(f"v{i}", "signup") for i in range(3)]
    wait_for(lambda: set(ids) <= accepted(sandbox), 20)
    assert min(event.time for event in sandbox.events()) >= until - 0.1
