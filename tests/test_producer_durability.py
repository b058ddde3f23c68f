"""The producer when Redis is down or slow: bounded waits, the spool, and re-sending.

Each kind of dead Redis is real: a closed port, a socket that accepts and never answers, a
``redis-server`` of the test's own frozen with ``CLIENT PAUSE``, and one whose every reply comes
late through a delaying proxy.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from goalqueue import ConfigError, EnqueueError, GoalQueue, InvalidGoal, MaybeEnqueued, NotEnqueued
from goalqueue.config import Settings
from goalqueue.event import GoalEvent
from goalqueue.spool import Spool
from tests.helpers.ports import dead_redis_url, free_port
from tests.helpers.proxies import SlowProxy
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS
from tests.helpers.spool import spooled_rows
from tests.helpers.waiting import wait_for

TIMEOUT = 0.3
# Scheduling noise on a busy test machine; a second attempt after the timeout would exceed it.
MARGIN = 0.2


@pytest.fixture
def own_redis(redis_server: Callable[..., RedisServer]) -> RedisServer:
    """A ``redis-server`` of this test's own on a free port."""
    return redis_server()


@pytest.fixture(params=["closed-port", "silent-listener", "client-pause", "slow-replies"])
def dead_url(request: pytest.FixtureRequest, own_redis: RedisServer) -> Iterator[str]:
    """A Redis URL that cannot take a goal within TIMEOUT, in one of four ways."""
    kind = request.param
    if kind == "closed-port":
        yield dead_redis_url()
    elif kind == "silent-listener":
        with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
            yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    elif kind == "client-pause":
        # Every command, the handshake's too, waits; the server is killed after the test (CLIENT
        # UNPAUSE would wait in line as well)
        own_redis.client().client_pause(30_000, all=True)
        yield own_redis.url
    else:
        proxy = SlowProxy(own_redis.port, delay=TIMEOUT * 0.6)
        yield f"redis://127.0.0.1:{proxy.port}/0"
        proxy.close()


@pytest.fixture
def make_queue() -> Iterator[Callable[..., GoalQueue]]:
    """GoalQueues with the short TIMEOUT; every one is closed (flusher stopped) afterwards."""
    made: list[GoalQueue] = []

    def make(url: str, spool_dir: Path | None = None) -> GoalQueue:
        settings = Settings(
            broker_url=url,
            enqueue_timeout_seconds=TIMEOUT,
            spool_dir=None if spool_dir is None else str(spool_dir),
        )
        made.append(GoalQueue(settings=settings))
        return made[-1]

    yield make
    for queue in made:
        queue.close()


def timed(action: Callable[[], object]) -> tuple[float, object]:
    """How long ``action`` took, and what it returned or raised."""
    start = time.monotonic()
    try:
        outcome = action()
    except Exception as exc:
        outcome = exc
    return time.monotonic() - start, outcome


def spooled_ids(directory: Path) -> list[str]:
    return [event_id for event_id, _ in spooled_rows(directory)]


def ledger(client: redis.Redis) -> list[tuple[str, float]]:
    entries: list[tuple[str, float]] = client.zrange(KEYS.ledger, 0, -1, withscores=True)  # type: ignore[assignment]
    return entries


def ledger_ids(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["i"] for raw, _ in ledger(client)]


GOALS = [{"visitor_id": f"v{i}", "name": "signup"} for i in range(1200)]


# ------------------------------------------------------------------------ bounded waits


@pytest.mark.parametrize("bulk", [False, True], ids=["one-goal", "1200-goals"])
def test_without_a_spool_a_dead_redis_fails_within_the_timeout(
    dead_url: str, make_queue: Callable[..., GoalQueue], bulk: bool
) -> None:
    # Given a queue without a spool, pointed at a Redis that cannot answer in time
    queue = make_queue(dead_url)
    # When a goal (or a bulk of goals) is tracked
    elapsed, outcome = timed(
        (lambda: queue.track_goals(GOALS)) if bulk else (lambda: queue.track_goal("v1", "signup"))
    )
    # Then EnqueueError comes within the timeout (one attempt, no retries, no NOSCRIPT round)
    assert isinstance(outcome, EnqueueError), outcome
    assert elapsed < TIMEOUT + MARGIN, f"{elapsed:.3f} s"
    assert dead_url.split("//")[1] in str(outcome)
    # And it says the goals are not in Redis: the connection's handshake never completed, so the
    # command never went out (a command that went out unanswered is MaybeEnqueued, below)
    assert type(outcome) is NotEnqueued, outcome
    assert len(outcome.event_ids) == (len(GOALS) if bulk else 1)
    assert outcome.enqueued == [] and outcome.unconfirmed == outcome.event_ids


def test_with_a_spool_a_dead_redis_costs_one_timeout_then_none(
    dead_url: str, make_queue: Callable[..., GoalQueue], tmp_path: Path
) -> None:
    # Given a queue with a spool, pointed at a Redis that cannot answer in time
    queue = make_queue(dead_url, tmp_path / "spool")
    # When goals are tracked
    first_elapsed, first = timed(lambda: queue.track_goal("v1", "signup"))
    later_elapsed, later = timed(lambda: queue.track_goals(GOALS[:3]))
    # Then the first returns its id within the timeout, kept in the spool
    assert isinstance(first, str), first
    assert first_elapsed < TIMEOUT + MARGIN, f"{first_elapsed:.3f} s"
    # And later goals go straight to the spool while the flusher probes Redis
    assert isinstance(later, list), later
    assert later_elapsed < TIMEOUT * 0.8, f"{later_elapsed:.3f} s"
    assert spooled_ids(tmp_path / "spool") == [first, *later]


def test_a_paused_redis_enqueues_nothing_even_after_it_resumes(
    own_redis: RedisServer, make_queue: Callable[..., GoalQueue]
) -> None:
    # Given a Redis that holds back every write (the handshake still goes through)
    admin = own_redis.client()
    admin.client_pause(30_000, all=False)
    # When a bulk of goals fails: it went out, no answer came back
    with pytest.raises(MaybeEnqueued, match="enqueueing them again with the same event ids"):
        make_queue(own_redis.url).track_goals(GOALS)
    # Then, once Redis resumes, not one of them was enqueued: the timed-out connection was
    # dropped, and Redis discards a dropped client's pending commands
    admin.client_unpause()
    assert admin.dbsize() == 0


@pytest.mark.integration
def test_the_error_names_the_broker_without_its_password(
    make_queue: Callable[..., GoalQueue],
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(EnqueueError) as caught:
        make_queue(url).track_goal("v1", "signup")
    message = str(caught.value)
    assert "s3cret" not in message
    assert ":***@127.0.0.1" in message and "unreachable" in message


# -------------------------------------------------------------------------------- spooling


def test_spooled_goals_are_re_sent_with_their_ids_once_redis_is_back(
    own_redis: RedisServer, make_queue: Callable[..., GoalQueue], tmp_path: Path
) -> None:
    # Given a queue with a spool, and its Redis stopped
    queue = make_queue(own_redis.url, tmp_path / "spool")
    own_redis.stop()
    # When goals are tracked while Redis is down
    ids = [queue.track_goal(f"v{i}", "signup", metadata={"n": str(i)}) for i in range(3)]
    ids += queue.track_goals(GOALS[:2])
    spooled = spooled_rows(tmp_path / "spool")
    assert [event_id for event_id, _ in spooled] == ids
    # And Redis comes back on the same port
    own_redis.start()
    client = own_redis.client()
    # Then the flusher re-sends every goal, once each, with its id and payload unchanged
    wait_for(lambda: sorted(ledger_ids(client)) == sorted(ids), 15)
    wait_for(lambda: queue.backlog is not None and queue.backlog.spool.pending() == 0, 5)
    assert client.llen(KEYS.queue) == len(ids)
    assert sorted(raw for raw, _ in ledger(client)) == sorted(raw for _, raw in spooled)
    # And the producer sends straight to Redis again
    wait_for(lambda: queue.backlog is not None and not queue.backlog.redis_down, 5)
    fresh = queue.track_goal("v9", "signup")
    assert fresh in ledger_ids(client)


def test_a_goal_spooled_after_a_late_reply_is_not_doubled_in_the_ledger(
    own_redis: RedisServer, make_queue: Callable[..., GoalQueue], tmp_path: Path
) -> None:
    # Given a connected producer whose Redis turns slow: it runs every command it gets, but its
    # replies come after the timeout
    proxy = SlowProxy(own_redis.port, delay=0.0)
    try:
        queue = make_queue(f"redis://127.0.0.1:{proxy.port}/0", tmp_path / "spool")
        queue.track_goal("v0", "warm-up")
        proxy.delay = TIMEOUT * 1.5
        # When a goal is tracked: Redis enqueues it, the reply misses the timeout, it is spooled
        event_id = queue.track_goal("v1", "signup")
    finally:
        proxy.close()
    client = own_redis.client()
    ((entry, first_seq),) = [(r, s) for r, s in ledger(client) if json.loads(r)["i"] == event_id]
    assert spooled_rows(tmp_path / "spool") == [(event_id, entry)]
    # And the spool is re-sent to the same Redis
    resender = make_queue(own_redis.url)
    assert Spool(tmp_path / "spool").flush(resender) == 1
    # Then the copy found its event id known and added nothing: one ledger entry, one message
    assert [(r, s) for r, s in ledger(client) if r == entry] == [(entry, first_seq)]
    assert client.llen(KEYS.queue) == 2


def test_a_producer_re_sends_a_spool_left_behind_after_its_first_goal(
    own_redis: RedisServer, make_queue: Callable[..., GoalQueue], tmp_path: Path
) -> None:
    # Given a spool that an earlier process filled while Redis was down
    dead = make_queue(dead_redis_url(), tmp_path / "spool")
    left = dead.track_goals(GOALS[:5])
    dead.close()
    # When a new producer on a healthy Redis tracks its first goal
    fresh = make_queue(own_redis.url, tmp_path / "spool")
    first = fresh.track_goal("v9", "signup")
    # Then its flusher re-sends what was left, in the background
    client = own_redis.client()
    wait_for(lambda: set(ledger_ids(client)) == {first, *left}, 10)


SPOOLING_PROCESS = """
import sys
from goalqueue import GoalQueue
from goalqueue.config import Settings
queue = GoalQueue(settings=Settings(broker_url=sys.argv[1], enqueue_timeout_seconds=0.3,
                                    spool_dir=sys.argv[2]))
while True:
    print(queue.track_goal("visitor-1", "signup"), flush=True)
"""


def test_a_killed_process_leaves_its_spool_for_the_next_one(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    # Given a process spooling goals as fast as it can, Redis being down
    spool_dir = tmp_path / "spool"
    dead_url = dead_redis_url()
    command = [sys.executable, "-c", SPOOLING_PROCESS, dead_url, str(spool_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        returned = [process.stdout.readline().strip() for _ in range(200)]
    finally:
        # When it is killed mid-stream
        process.kill()
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    # Then every id it returned is in the spool, and a new process re-sends them all
    flush = subprocess.run(
        [sys.executable, "-c", "from goalqueue.cli import main; main()", "spool", "flush"],
        env={
            **os.environ,
            "GOALQUEUE_BROKER_URL": own_redis.url,
            "GOALQUEUE_SPOOL_DIR": str(spool_dir),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert flush.returncode == 0, flush.stderr
    sent = int(flush.stdout.split("re-sent ")[1].split()[0])
    assert sent >= len(returned)
    in_redis = ledger_ids(own_redis.client())
    assert set(returned) <= set(in_redis) and len(in_redis) == sent == len(set(in_redis))


# ---------------------------------------------------------------------- what is never spooled


def test_an_invalid_goal_is_refused_and_never_spooled(
    make_queue: Callable[..., GoalQueue], tmp_path: Path
) -> None:
    queue = make_queue(dead_redis_url(), tmp_path / "spool")
    with pytest.raises(InvalidGoal):
        queue.track_goal("has space", "signup")
    with pytest.raises(InvalidGoal):
        queue.track_goals([GOALS[0], {"visitor_id": "v", "name": ""}])
    assert spooled_ids(tmp_path / "spool") == []


@pytest.mark.integration
def test_when_the_spool_fails_too_the_error_says_so_and_nothing_is_lost_silently(
    make_queue: Callable[..., GoalQueue], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(dead_redis_url(), tmp_path / "spool")
    assert queue.backlog is not None

    def disk_full(events: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(queue.backlog.spool, "add", disk_full)
    with pytest.raises(EnqueueError) as caught:
        queue.track_goal("v1", "signup")
    assert "unreachable" in str(caught.value) and "disk is full" in str(caught.value)
    assert "nothing was kept" in str(caught.value)


def test_a_spool_dir_that_cannot_be_created_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    settings = Settings(spool_dir=str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="GOALQUEUE_SPOOL_DIR"):
        GoalQueue(settings=settings)


@pytest.mark.integration
def test_spooling_warns_once_per_minute_not_once_per_goal(
    make_queue: Callable[..., GoalQueue], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(dead_redis_url(), tmp_path / "spool")
    with caplog.at_level(logging.WARNING, logger="goalqueue.spool"):
        for i in range(20):
            queue.track_goal(f"v{i}", "signup")
    spooling = [r for r in caplog.records if "spooled" in r.getMessage()]
    assert len(spooling) == 1
    assert "unreachable" in spooling[0].getMessage()
    assert str(tmp_path / "spool") in spooling[0].getMessage()


def test_settings_read_the_spool_dir_from_the_environment() -> None:
    assert Settings.from_env({"GOALQUEUE_SPOOL_DIR": " /var/spool/goals "}).spool_dir == (
        "/var/spool/goals"
    )
    assert Settings.from_env({}).spool_dir is None
    assert replace(Settings(), spool_dir="x").spool_dir == "x"


def test_goal_event_round_trip_keeps_spooled_bytes() -> None:
    """The flusher re-sends stored bytes; parsing and re-encoding would give the same ones."""
    event = GoalEvent("id-1", "v1", "signup", 1700000000.123, {"a": "é"}, "d")
    assert GoalEvent.from_json(event.to_json()).to_json() == event.to_json()
