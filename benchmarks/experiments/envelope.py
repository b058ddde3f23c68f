"""Which bytes of a queued goal can go: envelope variants tried on a real worker, and the
Redis memory of each layout.

    python -m benchmarks.experiments.envelope [--n 20000]

For every candidate message template it enqueues goals with goalqueue's own ENQUEUE script
(only the template differs), runs the real default worker against the fast endpoint and
reports whether every goal was delivered with nothing dead-lettered, plus the bytes per ready
goal. Then it measures the ledger layouts (zset member vs hash field) and shorter event ids on
bare Redis.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks.procs import Processes, exclusive
from benchmarks.scenarios import Endpoint, used_memory
from benchmarks.systems import GOALQUEUE_URL, System, bounded_poll, flush
from benchmarks.workload import goal_fields
from goalqueue import keys
from goalqueue.event import GoalEvent
from goalqueue.producer import new_event
from goalqueue.schema import validate_goal
from goalqueue.scripts import Scripts


def envelope(**changes: Any) -> str:
    """goalqueue's message template with some fields changed or (value None) removed."""
    base: dict[str, Any] = {
        "body": '[["%s",%d],{},{}]',
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": "%s", "task": keys.TASK_NAME},
        "properties": {
            "delivery_tag": "%d",
            "delivery_info": {"exchange": "", "routing_key": keys.QUEUE},
        },
    }
    for name, value in changes.items():
        path = name.split("__")
        target = base
        for part in path[:-1]:
            target = target[part]
        if value is None:
            target.pop(path[-1].replace("_", "-"), None)
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return json.dumps(base, separators=(",", ":"))


CANDIDATES: dict[str, str] = {
    "current": envelope(),
    "no content-encoding": envelope(content_encoding=None),
    "no content-encoding, no exchange": envelope(
        content_encoding=None,
        properties={"delivery_tag": "%d", "delivery_info": {"routing_key": keys.QUEUE}},
    ),
    "no content-encoding, no delivery_info": envelope(
        content_encoding=None, properties={"delivery_tag": "%d"}
    ),
    "no content-encoding, body without embed": envelope(
        content_encoding=None, body='[["%s",%d],{}]'
    ),
}


def _events(n: int, make_id: Callable[[], str]) -> list[GoalEvent]:
    events = []
    for _ in range(n):
        fields = goal_fields()
        event = new_event(validate_goal(fields["visitor_id"], fields["name"], fields["metadata"]))
        events.append(GoalEvent(**{**event.as_dict(), "event_id": make_id()}))
    return events


def enqueue(client: redis.Redis, template: str, events: list[GoalEvent]) -> None:
    scripts = Scripts(client)
    for start in range(0, len(events), 500):
        args: list[str | int | float] = [template]
        for event in events[start : start + 500]:
            args += (event.event_id, event.to_json())
        scripts.enqueue(args)


def bytes_per_goal(template: str, n: int, make_id: Callable[[], str]) -> int:
    flush(GOALQUEUE_URL)
    client = redis.Redis.from_url(GOALQUEUE_URL)
    try:
        events = _events(n, make_id)
        empty = used_memory(client)
        enqueue(client, template, events)
        return round((used_memory(client) - empty) / n)
    finally:
        client.close()
        flush(GOALQUEUE_URL)


def works_with_worker(template: str, count: int = 50) -> str:
    """Deliver ``count`` goals written with ``template`` through a real default worker."""
    flush(GOALQUEUE_URL)
    client = redis.Redis.from_url(GOALQUEUE_URL, decode_responses=True)
    system = System("goalqueue", "default", "goalqueue")
    try:
        with Processes(Path(tempfile.mkdtemp(prefix="goalqueue-envelope-"))) as procs:
            endpoint = Endpoint(procs, 0)
            enqueue(client, template, _events(count, lambda: str(uuid.uuid4())))
            worker = procs.start("worker", system.argv(), system.env(endpoint.url))
            for _ in bounded_poll(30, 0.1):
                settled = int(client.get(keys.DELIVERED_COUNT) or 0)
                if settled >= count or not worker.alive():
                    break
            dead = client.hlen(keys.DEAD)
            delivered = endpoint.count()
            log = worker.output(100_000)
            endpoint.close()
        errors = log.count("ERROR") + log.count("CRITICAL")
        verdict = "works" if delivered == count and not dead and not errors else "BREAKS"
        return (
            f"{verdict}: delivered {delivered}/{count}, settled {settled}, dead {dead}, "
            f"error log lines {errors}"
        )
    finally:
        client.close()
        flush(GOALQUEUE_URL)


def ledger_layouts(n: int) -> dict[str, int]:
    """Bytes per goal of the ledger alone: zset member (today) vs hash field by sequence."""
    events = _events(n, lambda: str(uuid.uuid4()))
    out = {}
    client = redis.Redis.from_url(GOALQUEUE_URL)
    try:
        for name in ("zset member, scored by seq", "hash seq -> payload"):
            flush(GOALQUEUE_URL)
            empty = used_memory(client)
            with client.pipeline(transaction=False) as pipe:
                for seq, event in enumerate(events, start=1):
                    if name.startswith("zset"):
                        pipe.zadd("bench:ledger", {event.to_json(): seq})
                    else:
                        pipe.hset("bench:ledger", str(seq), event.to_json())
                pipe.execute()
            out[name] = round((used_memory(client) - empty) / n)
    finally:
        client.close()
        flush(GOALQUEUE_URL)
    return out


def short_id() -> str:
    """A UUID4 as 22 characters of URL-safe base64."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--skip-worker", action="store_true")
    args = parser.parse_args(argv)
    with exclusive(600):
        _report(args)
    return 0


def _report(args: argparse.Namespace) -> None:
    print(f"{'template':<42}{'msg B':>7}{'B/goal':>8}  with a real worker")
    for name, template in CANDIDATES.items():
        message = template % (str(uuid.uuid4()), 123456, str(uuid.uuid4()), 123456)
        per_goal = bytes_per_goal(template, args.n, lambda: str(uuid.uuid4()))
        check = "-" if args.skip_worker else works_with_worker(template)
        print(f"{name:<42}{len(message):>7}{per_goal:>8}  {check}", flush=True)
    lean = CANDIDATES["no content-encoding"]
    print(
        f"{'no content-encoding + 22-char event ids':<42}{'':>7}"
        f"{bytes_per_goal(lean, args.n, short_id):>8}"
    )
    for name, size in ledger_layouts(args.n).items():
        print(f"ledger alone, {name:<28}{'':>7}{size:>8}")


if __name__ == "__main__":
    sys.exit(main())
