"""Dead letters at scale, against the real Redis: counted by reason from their indexes (never by
reading them), pruned by the workers' sweepers, read a page at a time, and recounted."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter, DeadLetters
from goalqueue.event import GoalEvent
from goalqueue.metrics.collector import GoalQueueCollector
from goalqueue.tally import LETTER_REASONS, read
from tests.helpers.deadletters import kill, settle
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers
from workers.sweeper import Sweeper
from workers.transport import bury

pytestmark = pytest.mark.integration


def scraped(client: redis.Redis) -> dict[str, float]:
    """``goalqueue_dead_letters`` by reason, as a scrape reads it."""
    return {
        sample.labels["reason"]: sample.value
        for family in GoalQueueCollector(client, KEYS).collect()
        if family.name == "goalqueue_dead_letters"
        for sample in family.samples
    }


def counted(client: redis.Redis) -> dict[str, float]:
    """The dead letters by reason, read from every letter; what the scrape should say."""
    reasons = Counter(json.loads(raw)["reason"] for raw in client.hvals(KEYS.dead))
    return {reason: reasons[reason] for reason in LETTER_REASONS} | {"unindexed": 0}


def letters(count: int, reason: str, dead_at: float) -> list[DeadLetter]:
    """Dead letters of goals never enqueued, a millisecond apart from ``dead_at``."""
    return [
        replace(
            DeadLetter.of(
                GoalEvent(f"{reason}-{i:05}", "v", "signup", enqueued_at=dead_at), reason
            ),
            dead_at=dead_at + i / 1000,
        )
        for i in range(count)
    ]


@contextmanager
def monitored(url: str) -> Iterator[list[str]]:
    """The commands Redis runs (those of scripts included) while in the block (MONITOR)."""
    commands: list[str] = []
    client = redis.Redis.from_url(url, decode_responses=True)
    with client.monitor() as monitor:

        def listen() -> None:
            for command in monitor.listen():
                if command["command"] == "ECHO monitored":
                    return
                commands.append(command["command"])

        listener = threading.Thread(target=listen)
        listener.start()
        yield commands
        redis.Redis.from_url(url).echo("monitored")
        listener.join(5)
    client.close()


def test_the_count_by_reason_is_right_after_every_writer_and_read_without_the_letters(
    settings: Settings, queue: GoalQueue, redis_client: redis.Redis, redis_url: str
) -> None:
    letters_ = DeadLetters(redis_client, KEYS)
    # Given letters dead-lettered by SETTLE, as workers do: 3 unknown visitors, 2 bad requests
    unknown = [kill(redis_client, queue, f"u{i}") for i in range(3)]
    bad = [kill(redis_client, queue, f"b{i}", status=400, reason="bad_request") for i in range(2)]
    assert scraped(redis_client) == counted(redis_client)
    assert scraped(redis_client)["unknown_visitor"] == 3
    # And two poison messages the transport buried
    poison = [bury(redis_client, KEYS, f"garbage {i}", "unreadable") for i in range(2)]
    assert None not in poison and scraped(redis_client)["poison"] == 2
    assert scraped(redis_client) == counted(redis_client)

    # When two letters are replayed, Then they are counted no more
    assert letters_.replay([unknown[0], bad[0]])[0] == [unknown[0], bad[0]]
    assert scraped(redis_client) == counted(redis_client)
    assert (scraped(redis_client)["unknown_visitor"], scraped(redis_client)["bad_request"]) == (
        2,
        1,
    )
    # When one is purged, Then the same
    assert letters_.purge([unknown[1]]) == 1
    assert scraped(redis_client) == counted(redis_client)
    # When the sweeper prunes down to 2 letters, Then the same, and the poison, newest, is left
    capped = replace(settings, dead_max=2)
    assert Sweeper(capped, redis_client).prune(time.time()) == (0, 2)
    assert scraped(redis_client) == counted(redis_client)
    assert scraped(redis_client)["poison"] == 2 and sum(scraped(redis_client).values()) == 2

    # And a scrape reads the dead-letter hash's size alone, never a letter
    with monitored(redis_url) as commands:
        scraped(redis_client)
    dead = [command for command in commands if command.split()[1:2] == [KEYS.dead]]
    assert dead and {command.split()[0].upper() for command in dead} == {"HLEN"}


def test_workers_prune_the_oldest_dead_letters_past_the_retention_and_beyond_the_cap(
    queue: GoalQueue, workers: Workers, redis_client: redis.Redis
) -> None:
    # Given 3 dead letters older than the retention (30 days), and 7 from the last hour
    now = time.time()
    expired = [kill(redis_client, queue, f"e{i}", dead_at=now - 31 * 86400 + i) for i in range(3)]
    recent = [kill(redis_client, queue, f"r{i}", dead_at=now - 3600 + i) for i in range(7)]
    # When a worker runs that keeps 5 at most
    worker = workers.start(env={"GOALQUEUE_DEAD_MAX": "5"})
    # Then it deletes the expired ones and the 2 oldest recent ones
    wait_for(lambda: redis_client.hlen(KEYS.dead) == 5, 10)
    assert [letter.event_id for letter in DeadLetters(redis_client, KEYS)] == recent[2:]
    assert not any(redis_client.hexists(KEYS.dead, event_id) for event_id in expired)
    # And counts them, for each limit, and says so in its log
    assert read(redis_client, KEYS).pruned == {"retention": 3, "max": 2}
    logged = "pruned 3 dead letter(s) older than 30 days and 2 beyond the newest 5"
    wait_for(lambda: logged in worker.output(), 5)
    assert scraped(redis_client)["unknown_visitor"] == 5


def test_sweepers_pruning_at_once_delete_each_letter_once_and_a_round_at_most_500(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Given 1,400 dead letters, the 200 oldest past the retention, and a cap of 100
    now = time.time()
    old = letters(200, "expired", now - 40 * 86400)
    new = letters(1200, "unknown_visitor", now - 3600)
    settle(redis_client, (("", letter) for letter in old + new))
    capped = replace(settings, dead_max=100)
    # When one sweeper prunes one round, Then at most 500 go, the expired first
    assert Sweeper(capped, redis_client).prune(now) == (200, 300)
    # When six sweepers prune at once until nothing is left to prune
    pruned: list[tuple[int, int]] = []

    def prune() -> None:
        sweeper = Sweeper(capped, redis.Redis.from_url(settings.broker_url))
        while (round_ := sweeper.prune(now)) != (0, 0):
            pruned.append(round_)

    threads = [threading.Thread(target=prune) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then the newest 100 are left, and each pruned letter was counted once
    assert sum(over for _, over in pruned) == 800
    kept = [letter.event_id for letter in DeadLetters(redis_client, KEYS)]
    assert kept == [letter.event_id for letter in new[-100:]]
    assert read(redis_client, KEYS).pruned == {"retention": 200, "max": 1100}


def test_letters_dead_at_one_instant_are_each_read_once_whatever_the_page_size(
    redis_client: redis.Redis,
) -> None:
    # Given 25 letters dead at one instant, between 5 dead before and 5 after
    now = time.time()
    tied = [replace(letter, dead_at=now) for letter in letters(25, "bad_request", now)]
    before = letters(5, "unknown_visitor", now - 10)
    after = letters(5, "client_error", now + 10)
    settle(redis_client, (("", letter) for letter in before + tied + after))
    store = DeadLetters(redis_client, KEYS)
    # When they are read 10 (or 3, or 7) at a time, oldest first
    for size in (3, 7, 10):
        pages = list(store.pages(LETTER_REASONS, (-math.inf, math.inf), lambda _: True, size))
        read_ = [letter.event_id for _, page in pages for letter in page]
        # Then each is read once, in order of death (ties by event id)
        assert read_ == [
            x.event_id for x in before + sorted(tied, key=lambda x: x.event_id) + after
        ], size
        assert sum(examined for examined, _ in pages) == 35


def test_recount_indexes_letters_no_index_holds_and_drops_entries_no_letter_backs(
    queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given three dead letters, one then deleted by hand from the hash alone
    ids = [kill(redis_client, queue, f"v{i}") for i in range(3)]
    redis_client.hdel(KEYS.dead, ids[0])
    # And two an older goalqueue kept (the hash alone), and a value that is not a letter
    for letter in letters(2, "expired", time.time() - 60):
        redis_client.hset(KEYS.dead, letter.event_id, letter.to_json())
    redis_client.hset(KEYS.dead, "junk", "{not json")
    # Then a scrape tells that letters are in no index, but not how many of each
    assert scraped(redis_client)["unindexed"] == 2
    assert scraped(redis_client)["unknown_visitor"] == 3
    store = DeadLetters(redis_client, KEYS)
    assert store.unindexed() == 2 and [x.event_id for x in store] == ids[1:]

    # When they are recounted
    assert store.recount(time.time()) == (3, 1)
    # Then each letter is counted under its reason, and the commands see every one
    assert scraped(redis_client) == {
        **dict.fromkeys(LETTER_REASONS, 0),
        "unknown_visitor": 2,
        "expired": 2,
        "corrupt": 1,
        "unindexed": 0,
    }
    assert {x.event_id for x in store} == {*ids[1:], "expired-00000", "expired-00001"}
    # And a second recount finds nothing to change
    assert store.recount(time.time()) == (0, 0)
