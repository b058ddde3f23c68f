"""Duplicates when DataFast is slow but accepts: the reproduction of issue 16, item 6.

The sandbox answers every goal after ``--latency`` seconds, longer than the workers' HTTP
timeout, and accepts it all the same (it records the goal even though the client has gone). One
real ``celery -A workers worker`` delivers ``--goals`` goals, whose maximum age is ``--max-age``;
the run ends once every goal is delivered or dead-lettered and the sandbox has answered every
request it received. It prints the POSTs, the goals DataFast accepted, the duplicates (an
``Idempotency-Key`` accepted more than once), the dead letters by reason and the seconds taken.

    python -m benchmarks.slow_datafast --redis-url redis://127.0.0.1:6379/10

The database named is flushed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from goalqueue import GoalQueue
from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetters
from goalqueue.sandbox import Sandbox


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", required=True, help="a Redis database to flush and use")
    parser.add_argument("--goals", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=2.0, help="the workers' HTTP timeout")
    parser.add_argument("--latency", type=float, default=3.0, help="DataFast's answer time")
    parser.add_argument("--max-age", type=float, default=25.0, help="GOALQUEUE_MAX_AGE_SECONDS")
    parser.add_argument("--budget", type=float, default=180.0, help="give up after (seconds)")
    return parser.parse_args()


def _worker(settings: Settings, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GOALQUEUE_BROKER_URL": settings.broker_url,
        "DATAFAST_API_KEY": "df_sandbox",
        "DATAFAST_API_URL": url,
        "GOALQUEUE_HTTP_TIMEOUT_SECONDS": str(settings.http_timeout_seconds),
        "GOALQUEUE_MAX_AGE_SECONDS": str(settings.max_age_seconds),
    }
    command = [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO"]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def main() -> None:
    args = _arguments()
    settings = Settings(
        broker_url=args.redis_url, http_timeout_seconds=args.timeout, max_age_seconds=args.max_age
    )
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    client.flushdb()
    keys = settings.keys
    with Sandbox() as sandbox, tempfile.TemporaryDirectory() as tmp:
        sandbox.set_faults(latency_ms=args.latency * 1000)
        worker = _worker(settings, sandbox.url, Path(tmp) / "worker.log")
        try:
            started = time.monotonic()
            goals = [{"visitor_id": f"v{i}", "name": "signup"} for i in range(args.goals)]
            GoalQueue(settings=settings).track_goals(goals)
            while time.monotonic() - started < args.budget:
                settled = int(client.get(keys.delivered_count) or 0) + client.hlen(keys.dead)
                if settled >= args.goals and sandbox.stats().in_flight == 0:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
        finally:
            worker.terminate()
            worker.wait(30)
        stats = sandbox.stats()
    reasons = Counter(letter.reason for letter in DeadLetters(client, keys))
    delivered = int(client.get(keys.delivered_count) or 0)
    client.flushdb()
    print(
        json.dumps(
            {
                "goals": args.goals,
                "posts": stats.total,
                "accepted": stats.accepted,
                "distinct_accepted": stats.distinct_keys,
                "duplicates": stats.duplicates,
                "delivered_counted": delivered,
                "dead": dict(reasons),
                "seconds": round(elapsed, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
