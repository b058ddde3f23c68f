"""Where a goalqueue worker's CPU goes while it drains a backlog (needs ``pip install py-spy``).

    python -m benchmarks.profile_worker [--n 20000] [--seconds 10] [--latency-ms 0]
                                        [--variant "-c 8"] [--svg profile.svg]

Pre-enqueues ``n`` goals, starts the worker against the fast endpoint, and samples it with
``py-spy record --gil`` (only the thread holding the GIL: in a GIL-bound worker that is where
the CPU goes). Each sample is charged to the library of its innermost recognised frame (self
time by layer) and, separately, counted for every activity its stack passes through
(inclusive time). Prints both tables, and the goals/s and CPU per goal during the profile.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from benchmarks.procs import Processes, exclusive
from benchmarks.scenarios import Endpoint, redis_cpu
from benchmarks.systems import GOALQUEUE_URL, System, bounded_poll, flush, variant

# Innermost matching frame wins: (layer, prefix of the frame's file path as py-spy prints it).
LAYERS: list[tuple[str, str]] = [
    ("logging", "logging/"),
    ("json", "json/"),
    ("aiohttp (HTTP/1.1, connections)", "aiohttp/"),
    ("httpx (client)", "httpx/"),
    ("httpx-aiohttp (transport)", "httpx_aiohttp/"),
    ("asyncio (event loop)", "asyncio/"),
    ("redis-py", "redis/"),
    ("kombu", "kombu/"),
    ("celery/billiard", "celery/"),
    ("celery/billiard", "billiard/"),
    ("goalqueue + workers code", "goalqueue/"),
    ("goalqueue + workers code", "workers/"),
    ("socket/ssl/selectors", "socket.py"),
    ("socket/ssl/selectors", "ssl.py"),
    ("socket/ssl/selectors", "selectors.py"),
    ("threading/queue/futures", "threading.py"),
    ("threading/queue/futures", "concurrent/"),
    ("threading/queue/futures", "queue.py"),
    ("uuid/random/time", "uuid.py"),
]

# A sample counts for every activity with a frame matching (function, file prefix) in its stack.
ACTIVITIES: list[tuple[str, str, str]] = [
    ("consumer: kombu Redis transport (BRPOP, unacked, QoS)", "", "kombu/transport/redis.py"),
    ("consumer: task message -> Request (celery.worker.strategy)", "", "celery/worker/strategy.py"),
    ("task thread handing goals to the loop (celery.app.trace)", "", "celery/app/trace.py"),
    ("event loop (asyncio)", "BaseEventLoop.run_forever", "asyncio/"),
    ("  TAKE script (a task's goal, claims)", "Deliverer._take_once", "workers/delivery.py"),
    ("  HTTP POST and its answer (httpx on aiohttp)", "post_goal", "workers/client.py"),
    ("  decide (workers.decide)", "decide", "workers/decide.py"),
    ("  recording (SETTLE, DEFER)", "Writer.write", "workers/recording.py"),
    ("  GoalEvent from_json/to_json/attempted", "GoalEvent.", "goalqueue/event.py"),
    ("ack (kombu)", "Message.ack", "kombu/message.py"),
    ("task events: Celery's, then the claimed goals' (events thread)", "", "celery/events/"),
    ("logging (any)", "", "logging/"),
    ("sweeper + reconciler thread", "", "workers/sweeper.py"),
]
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):\d+\)$")


def _frames(stack: str) -> list[tuple[str, str]]:
    frames = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        frames.append((match["function"], match["path"]) if match else (frame, ""))
    return frames


def summarise(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, self samples by layer, inclusive samples by activity."""
    total = 0
    layers: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = _frames(stack)
        layers[_layer(frames)] += count
        for name, function, path in ACTIVITIES:
            if any(f.startswith(function) and p.startswith(path) for f, p in frames):
                activities[name] += count
    return total, layers, activities


def _layer(frames: list[tuple[str, str]]) -> str:
    for _, path in reversed(frames):
        for name, prefix in LAYERS:
            if path.startswith(prefix):
                return name
    return "other (interpreter, stdlib)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--variant", default="", help='extra worker arguments, e.g. "-c 8"')
    parser.add_argument("--svg", default=None, help="also write a flame graph here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    system = (
        variant(args.variant, 0) if args.variant else System("goalqueue", "default", "goalqueue")
    )
    with exclusive(600):
        return _profile(args, py_spy, system)


def _record(py_spy: str, pid: int, output: Path, seconds: float, *extra: str) -> None:
    """py-spy samples of the GIL holder in ``pid`` for ``seconds``, written to ``output``."""
    subprocess.run(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--gil",
            "--rate",
            "250",
            *extra,
            "--duration",
            str(int(seconds)),
            "--output",
            str(output),
            "--nonblocking",
        ],
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )


def _profile(args: argparse.Namespace, py_spy: str, system: System) -> int:
    work = Path(tempfile.mkdtemp(prefix="goalqueue-profile-"))
    flush(GOALQUEUE_URL)
    client = redis.Redis.from_url(GOALQUEUE_URL)
    with Processes(work) as procs:
        endpoint = Endpoint(procs, args.latency_ms)
        system.enqueuer().many(args.n)
        worker = procs.start("worker", system.argv(), system.env(endpoint.url))
        for _ in bounded_poll(60, 0.05):
            if endpoint.count() > 200:
                break
        before = (
            endpoint.count(),
            time.monotonic(),
            worker.cpu_seconds(),
            redis_cpu(client),
            endpoint.child.cpu_seconds(),
        )
        raw = work / "profile.txt"
        _record(py_spy, worker.pid, raw, args.seconds, "--format", "raw")
        after = (
            endpoint.count(),
            time.monotonic(),
            worker.cpu_seconds(),
            redis_cpu(client),
            endpoint.child.cpu_seconds(),
        )
        if args.svg:
            _record(py_spy, worker.pid, Path(args.svg), 5)
        endpoint.close()
    client.close()
    flush(GOALQUEUE_URL)
    goals = after[0] - before[0]
    print(
        f"worker {system.argv()[5:]}: {goals / (after[1] - before[1]):.0f} goals/s while "
        f"profiled; CPU µs/goal: worker {(after[2] - before[2]) / goals * 1e6:.0f}, "
        f"redis {(after[3] - before[3]) / goals * 1e6:.0f}, "
        f"endpoint {(after[4] - before[4]) / goals * 1e6:.0f}"
    )
    total, layers, activities = summarise(raw)
    print(f"\nSelf time by layer (innermost recognised frame), {total} GIL samples")
    for name, count in layers.most_common():
        print(f"  {name:<45}{100 * count / total:5.1f} %")
    print("\nInclusive time by activity")
    for name, _, _ in ACTIVITIES:
        print(f"  {name:<66}{100 * activities[name] / total:5.1f} %")
    print(f"\nraw collapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
