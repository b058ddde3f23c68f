"""The goalqueue command, run through click's CliRunner against the real Redis."""

from __future__ import annotations

import json

import pytest
import redis
from click.testing import CliRunner, Result

from goalqueue import GoalQueue
from goalqueue.cli import main
from goalqueue.config import get_settings
from goalqueue.deadletters import DeadLetter, DeadLetters
from goalqueue.event import GoalEvent
from goalqueue.keys import Keys


@pytest.fixture
def run(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", redis_url)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


KEYS = Keys()  # the default namespace, which the tests' settings use


def bury(client: redis.Redis, queue: GoalQueue, visitor: str, status: int, reason: str) -> str:
    """Enqueue a goal and move it straight to the dead letters, as a worker would."""
    event_id = queue.track_goal(visitor, "signup")
    (raw,) = [r for r in client.zrange(KEYS.ledger, 0, -1) if event_id in r]
    event = GoalEvent.from_json(raw).attempted(1000.0, status, "visitor has no pageviews")
    client.zrem(KEYS.ledger, raw)
    client.lpop(KEYS.queue)
    client.hset(KEYS.dead, event_id, DeadLetter.of(event, reason).to_json())
    return event_id


def test_send_prints_the_event_id_of_the_enqueued_goal(run, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    result = run("send", "visitor-1", "signup", "--metadata", "plan=pro", "-d", "first")
    assert result.exit_code == 0
    event_id = result.output.strip()
    (raw,) = redis_client.zrange(KEYS.ledger, 0, -1)
    event = GoalEvent.from_json(raw)
    assert (event.event_id, event.metadata, event.description) == (
        event_id,
        {"plan": "pro"},
        "first",
    )


def test_send_with_invalid_fields_exits_2_with_every_error_and_no_traceback(
    run, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    result = run("send", "a visitor", "identify", "--metadata", "Bad=1")
    assert result.exit_code == 2
    assert "visitor_id:" in result.output and "name:" in result.output
    assert "metadata:" in result.output
    assert "Traceback" not in result.output
    assert redis_client.dbsize() == 0


def test_send_with_unreachable_redis_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS", "0.5")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["send", "v", "signup"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "could not enqueue" in result.output and "Traceback" not in result.output


def test_stats_json_reports_every_count(run, queue: GoalQueue, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    queue.track_goal("v", "signup")
    bury(redis_client, queue, "w", 404, "unknown_visitor")
    redis_client.set(KEYS.delivered_count, 7)
    redis_client.hset(KEYS.pause, mapping={"until": 2e9, "reason": "rate_limited"})
    stats = json.loads(run("stats", "--json").output)
    assert stats["queued"] == 1 and stats["waiting"] == 0
    assert stats["delivered"] == 7 and stats["dead"] == 1
    assert stats["paused_until"] == 2e9
    assert run("stats").exit_code == 0


def test_dead_list_replay_and_purge(run, queue: GoalQueue, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    # Given two dead letters
    first = bury(redis_client, queue, "v1", 404, "unknown_visitor")
    second = bury(redis_client, queue, "v2", 400, "bad_request")
    # When they are listed as JSON, each carries what an operator needs
    listed = {row["event_id"]: row for row in json.loads(run("dead", "list", "--json").output)}
    assert set(listed) == {first, second}
    row = listed[first]
    assert (row["visitor_id"], row["name"], row["status_code"]) == ("v1", "signup", 404)
    assert (row["reason"], row["attempts"]) == ("unknown_visitor", 1)
    assert first in run("dead", "list").output
    # When one is replayed, it leaves the dead letters and is queued under the same id
    result = run("dead", "replay", first)
    assert result.exit_code == 0 and "replayed 1 of 1" in result.output
    assert [json.loads(m)["headers"]["id"] for m in redis_client.lrange(KEYS.queue, 0, -1)] == [
        first
    ]
    (raw,) = redis_client.zrange(KEYS.ledger, 0, -1)
    assert GoalEvent.from_json(raw).attempts == 0
    assert DeadLetters(redis_client, KEYS).get(first) is None
    # Replaying it again, or an unknown id, says so and exits non-zero
    assert run("dead", "replay", first, "nope").exit_code == 1
    # Purge asks first, then empties the dead letters
    assert run("dead", "purge", input="n\n").exit_code == 1
    assert run("dead", "purge", "--yes").output.strip() == "purged 1 dead letter(s)"
    assert run("dead", "list").output.strip() == "no dead letters"


def test_dead_replay_all(run, queue: GoalQueue, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    ids = {bury(redis_client, queue, f"v{i}", 404, "unknown_visitor") for i in range(3)}
    assert "replayed 3 of 3" in run("dead", "replay", "--all").output
    queued = {json.loads(m)["headers"]["id"] for m in redis_client.lrange(KEYS.queue, 0, -1)}
    assert queued == ids
    assert run("dead", "replay").exit_code == 2
