"""Two deployments in one Redis database, each in its own GOALQUEUE_NAMESPACE: real workers, one
sandbox, and nothing of one seen by the other, pauses included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetters
from goalqueue.errors import ConfigError, EnqueueError
from goalqueue.sandbox import Sandbox
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import quick_settings
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers, worker_env


def accepted(sandbox: Sandbox) -> set[str | None]:
    return {event.idempotency_key for event in sandbox.events(status=200)}


def stats(settings: Settings) -> dict[str, Any]:
    """``goalqueue stats --json`` as an operator of that deployment runs it."""
    env = {
        **os.environ,
        "GOALQUEUE_BROKER_URL": settings.broker_url,
        "GOALQUEUE_NAMESPACE": settings.namespace,
    }
    command = [sys.executable, "-c", "from goalqueue.cli import main; main()", "stats", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_two_namespaces_share_a_database_and_never_see_each_other(
    settings: Settings, sandbox: Sandbox, tmp_path: Path
) -> None:
    # Given staging and production in one Redis database, each with a worker
    staging = replace(settings, namespace="staging")
    production = replace(settings, namespace="production")
    staging_workers = Workers(tmp_path / "staging", worker_env(staging, sandbox.url))
    production_workers = Workers(tmp_path / "production", worker_env(production, sandbox.url))
    (tmp_path / "staging").mkdir()
    (tmp_path / "production").mkdir()
    try:
        staging_workers.start()
        production_workers.start()
        _deliver_in_both(staging, production, sandbox)
    finally:
        staging_workers.stop_all()
        production_workers.stop_all()


def _deliver_in_both(staging: Settings, production: Settings, sandbox: Sandbox) -> None:
    staging_queue, production_queue = GoalQueue(settings=staging), GoalQueue(settings=production)
    client = staging_queue.redis
    # When staging's first goal draws a 429 that pauses delivery for a minute...
    sandbox.fail_next(429, retry_after=60)
    first = staging_queue.track_goal("v", "signup")
    wait_for(lambda: client.exists(staging.keys.pause), 10)
    held = staging_queue.track_goals([{"visitor_id": f"s{i}", "name": "signup"} for i in range(5)])
    # ...production goes on delivering, its bot's goal a dead letter of its own
    sandbox.add_bots("bot")
    delivered = production_queue.track_goals(
        [{"visitor_id": f"p{i}", "name": "signup"} for i in range(20)]
    )
    bot = production_queue.track_goal("bot", "signup")
    wait_for(lambda: set(delivered) <= accepted(sandbox), 30)
    wait_for(lambda: client.hlen(production.keys.dead) == 1, 10)
    # Then production was never paused, and staging's goals wait for their own pause
    assert not client.exists(production.keys.pause)
    assert accepted(sandbox).isdisjoint([first, *held])
    # And each deployment counts and keeps only its own
    assert [letter.event_id for letter in DeadLetters(client, production.keys)] == [bot]
    assert list(DeadLetters(client, staging.keys)) == []
    production_stats, staging_stats = stats(production), stats(staging)
    assert (production_stats["delivered"], production_stats["dead"]) == (20, 1)
    assert (staging_stats["delivered"], staging_stats["dead"]) == (0, 0)
    assert (
        staging_stats["pause_reason"] == "rate_limited" and production_stats["pause_reason"] is None
    )
    assert staging_stats["waiting"] + staging_stats["queued"] + staging_stats["in_flight"] == 6
    # When staging's pause is lifted, its goals are delivered too
    client.hset(staging.keys.pause, "until", 0)
    wait_for(lambda: {first, *held} <= accepted(sandbox), 30)
    assert sandbox.stats().duplicates == 0


def test_a_namespace_must_be_a_plain_name() -> None:
    with pytest.raises(ConfigError, match="GOALQUEUE_NAMESPACE"):
        Settings.from_env({"GOALQUEUE_NAMESPACE": "prod env"})
    assert Settings.from_env({"GOALQUEUE_NAMESPACE": "prod-eu.1"}).keys.queue == "prod-eu.1"


def acl_rules(namespace: str, db: int) -> list[str]:
    """The README's ACL for one namespace's user (keep the two the same)."""
    return [
        "resetkeys",
        f"~{namespace}*",
        f"~*.{namespace}.pidbox*",
        f"~_kombu.binding.{namespace}*",
        f"~_kombu.binding_permanent.{namespace}*",
        "~_kombu.binding_deadlines",
        "resetchannels",
        f"&/{db}.{namespace}.events/*",
        f"&/{db}.{namespace}.events/worker.*",
        f"&/{db}.{namespace}.pidbox",
        "+@all",
        "-@admin",
        "-@dangerous",
        "+info",
    ]


def test_the_readmes_acl_limits_a_user_to_one_namespace(
    redis_server: Callable[..., RedisServer], sandbox: Sandbox, tmp_path: Path
) -> None:
    # Given a Redis with a user for the staging namespace only, as the README shows
    server = redis_server()
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "staging", "on", ">s3cret", *acl_rules("staging", 0))
    url = f"redis://staging:s3cret@127.0.0.1:{server.port}/0"
    staging = replace(quick_settings(url), namespace="staging")
    workers = Workers(tmp_path, worker_env(staging, sandbox.url))
    try:
        # When a worker and a producer of staging use it
        workers.start()
        ids = GoalQueue(settings=staging).track_goals(
            [{"visitor_id": f"v{i}", "name": "signup"} for i in range(5)]
        )
        # Then they work, Flower's and `celery inspect`'s channels included...
        wait_for(lambda: set(ids) <= accepted(sandbox), 30)
        assert stats(staging)["delivered"] == 5
        # (INFO included: goalqueue stats, the exporter and the sweeper see a full Redis)
        assert stats(staging)["redis_full"] is False
        # ...and the user can touch no other namespace's keys
        production = GoalQueue(settings=replace(staging, namespace="production"))
        # (ENQUEUE's keys are constants of its script: its first command is refused)
        with pytest.raises(EnqueueError, match="can't access at least one of the keys"):
            production.track_goal("v", "signup")
        assert not admin.keys("production*")
        with pytest.raises(redis.exceptions.NoPermissionError):
            production.redis.llen(production.settings.keys.queue)
    finally:
        workers.stop_all()
