"""Delivered markers: packed, time-bucketed, sharded hashes that stay listpack-encoded, through
the same scripts the producer and the workers run, on the real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.keys import VISITOR_KEEP, VISITOR_WINDOW_SECONDS
from goalqueue.markers import Markers
from goalqueue.whereabouts import visits
from tests.helpers.markers import DAY
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.integration


def shards(client: redis.Redis) -> list[str]:
    return list(client.scan_iter(match=KEYS.delivered + ":*", count=1000))


def test_an_enqueue_of_a_delivered_goal_adds_nothing(
    redis_client: redis.Redis, queue: GoalQueue
) -> None:
    event_id = str(uuid.uuid4())
    assert Markers(redis_client, KEYS).mark([(event_id, "a" * 24)], DAY) == 1
    assert Markers(redis_client, KEYS).mark([(event_id, "b" * 24)], DAY) == 0
    queue.track_goal("v", "signup", event_id=event_id)
    assert redis_client.zcard(KEYS.ledger) == 0 and redis_client.llen(KEYS.queue) == 0


def test_ids_and_datafast_ids_of_every_form_are_kept_apart_and_read_back(
    redis_client: redis.Redis,
) -> None:
    markers = Markers(redis_client, KEYS)
    lower = str(uuid.uuid4())
    ids = {
        lower: "0123456789abcdef01234567",  # packed: 24 lowercase hex
        lower.upper(): "0123456789ABCDEF01234567",  # another id; kept as text
        "poison-" + lower: "",
        "sixteen-bytes-id": "x" * 200,  # too long to keep
        "a-b-c-d-e": "remote",
    }
    assert markers.mark(list(ids.items()), DAY) == len(ids)
    found = markers.find(list(ids))
    assert {i: m.remote_id for i, m in found.items()} == {**ids, "sixteen-bytes-id": ""}
    assert markers.find([str(uuid.uuid4()), "other"]) == {}


def test_a_bucket_expires_with_its_markers(redis_client: redis.Redis) -> None:
    markers = Markers(redis_client, KEYS)
    event_id = str(uuid.uuid4())
    markers.mark([(event_id, "")], 1.0)  # lives a second after its one-second bucket ends
    assert markers.get(event_id) is not None
    wait_for(lambda: markers.get(event_id) is None and not shards(redis_client), 5)
    # the next write forgets the bucket
    markers.mark([(str(uuid.uuid4()), "")], DAY)
    assert redis_client.hlen(KEYS.delivered) == 1


def test_a_full_bucket_splits_into_listpack_shards_within_64_bytes_a_goal(
    redis_client: redis.Redis,
) -> None:
    markers = Markers(redis_client, KEYS)
    ids = [str(uuid.uuid4()) for _ in range(3000)]
    for start in range(0, len(ids), 500):
        markers.mark([(i, f"{n:024x}") for n, i in enumerate(ids[start : start + 500])], DAY)
    keys = shards(redis_client)
    assert len(keys) > 40
    assert {redis_client.object("encoding", key) for key in keys} == {"listpack"}
    assert sum(redis_client.hlen(key) for key in keys) == len(ids)
    usage = sum(redis_client.memory_usage(key, samples=0) or 0 for key in keys)
    assert usage / len(ids) <= 64
    assert len(markers.find(ids[::7])) == len(ids[::7])


def test_the_visitor_index_keeps_each_visitors_newest_goals_for_an_hour(
    redis_client: redis.Redis, queue: GoalQueue
) -> None:
    # Given 3,000 goals of 300 visitors enqueued, a busy visitor's 150, and an awkward id's one
    goals = [{"visitor_id": f"visitor-{n % 300}", "name": "signup"} for n in range(3000)]
    for start in range(0, len(goals), 500):
        queue.track_goals(goals[start : start + 500])
    busy = queue.track_goals([{"visitor_id": "busy", "name": "signup"}] * VISITOR_KEEP)
    busy += [queue.track_goal("busy", "signup") for _ in range(50)]
    awkward = queue.track_goal('vis"itor\\', "signup")
    keys = list(redis_client.scan_iter(match=KEYS.visitor_prefix + "*", count=1000))
    # Then there is a small string per visitor, gone an hour after its last goal
    assert len(keys) == 302
    assert all(0 < redis_client.pttl(key) <= VISITOR_WINDOW_SECONDS * 1000 for key in keys)
    # (about 60 B a goal for its hour, 2.5 B a goal averaged over the markers' 24 h)
    usage = sum(redis_client.memory_usage(key, samples=0) or 0 for key in keys)
    assert usage / 3151 <= 72
    # And each visitor finds its own goals, newest first, the busy one its last VISITOR_KEEP
    assert len(visits(redis_client, KEYS, "visitor-7")) == 10
    assert [found.event_id for _, found in visits(redis_client, KEYS, "busy")] == busy[::-1][
        :VISITOR_KEEP
    ]
    assert [found.event_id for _, found in visits(redis_client, KEYS, 'vis"itor\\')] == [awkward]
