"""goalqueue against plain Celery + httpx and against the client limit, side by side.

    python -m benchmarks.run [--quick] [--n N] [--json PATH] [--variant ARGS ...]

Everything runs on this machine, in this run, against one local endpoint
(:mod:`benchmarks.endpoint`, started in its own process): Redis DB 12 for goalqueue, DB 11 for
plain Celery, each flushed before and after every scenario. It measures

1. enqueue cost (µs/goal): ``track_goal``, ``track_goals`` in bulk, bare ``apply_async``, raw
   ``LPUSH`` of the same message;
2. delivery throughput (goals/s) at 0 ms and 50 ms endpoint latency of one goalqueue worker
   process and one node (``goalqueue worker``), plain Celery threads -c 100, and the client
   limit (the worker's HTTP client alone) in one process and one per core; N goals are
   enqueued first and the rate runs from the first accepted goal to the N-th (steady state:
   start-up counts for no one), with CPU per goal over the same window; every system is
   measured in ``--rounds`` interleaved rounds (3; 1 with ``--quick``) and its row is its
   median round, so that a few seconds of a busier machine weigh on no single system;
3. Redis memory per queued goal (``INFO memory`` before and after N goals), ready and waiting,
   and per delivered goal once the queue has drained (at least 25,000: its marker);
4. enqueue-to-delivered latency p50/p99, one goal at a time on an idle system;

then checks the issue's targets. ``--quick`` is the CI smoke run (tiny N, 50 ms only, under a
minute): its numbers prove the harness works, not how fast anything is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import producers, scenarios
from benchmarks.procs import exclusive
from benchmarks.scenarios import Row
from benchmarks.systems import System, all_systems, client_limits, goalqueue_defaults, variant
from goalqueue.config import Settings

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
DEFAULT_SYSTEMS = (
    "goalqueue_process,goalqueue_node,plain_threads100,client_limit_process,client_limit_node"
)


@dataclass(frozen=True)
class Plan:
    """How big each scenario is."""

    n: int
    enqueue_n: int
    enqueue_repeats: int
    memory_n: int
    latency_samples: int
    budget_seconds: float
    rounds: int

    @classmethod
    def for_args(cls, quick: bool, n: int | None, rounds: int | None = None) -> Plan:
        if quick:
            # Enough goals for the client limit to show CPU: /proc counts it in 10 ms ticks.
            base = n or 500
            return cls(base, 3 * base, 1, 5 * base, 10, 15.0, rounds or 1)
        base = n or 10000
        # At least 25,000 goals for memory: the delivered markers' hashes grow in steps.
        return cls(base, min(base, 5000), 5, max(2 * base, 25_000), 200, 30.0, rounds or 3)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, checked against this run's numbers."""

    name: str
    value: float | None
    goal: str
    met: bool | None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    with exclusive(args.lock_timeout):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    plan = Plan.for_args(args.quick, args.n, args.rounds)
    sections = set(args.sections.split(","))
    pool, concurrency = goalqueue_defaults()
    wanted = set(args.systems.split(","))
    systems = [s for s in all_systems() if s.key in wanted]
    systems += [variant(spec, i) for i, spec in enumerate(args.variant, 1)]
    limits = [limit for limit in client_limits() if limit.key in wanted]
    log_dir = Path(tempfile.mkdtemp(prefix="goalqueue-bench-"))
    started = time.time()
    rows: list[Row] = []
    failures: list[str] = []

    def step(title: str, produce: Callable[[], list[Row]]) -> list[Row]:
        print(f"... {title}", file=sys.stderr, flush=True)
        began = time.perf_counter()
        produced: list[Row] = []
        try:
            produced = produce()
        except Exception as exc:  # one broken scenario must not lose the others' numbers
            print(f"    FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            failures.append(f"{title}: {type(exc).__name__}: {str(exc)[:2000]}")
        print(f"    {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
        return produced

    if "enqueue" in sections:
        rows.extend(
            step(
                "enqueue cost",
                lambda: scenarios.enqueue_costs(plan.enqueue_n, plan.enqueue_repeats),
            )
        )
    if "memory" in sections:
        rows.extend(step("Redis memory", lambda: scenarios.memory(plan.memory_n)))
    if "producers" in sections:
        rows.extend(step("producers", lambda: producers.rows(plan.enqueue_n, args.quick)))
    if "throughput" in sections:
        latencies = args.latencies or ("50" if args.quick else "0,50")
        for latency_ms in (float(ms) for ms in latencies.split(",")):
            measured = [
                (system.key, system.label, partial(scenarios.delivery, system))
                for system in systems
            ] + [
                (limit.key, limit.label, partial(scenarios.client_limit, limit)) for limit in limits
            ]
            rounds: dict[str, list[Row]] = {key: [] for key, _, _ in measured}
            for number in range(1, plan.rounds + 1):
                for key, label, measure in measured:
                    rounds[key] += step(
                        f"throughput {key} @ {latency_ms:g} ms, round {number}/{plan.rounds}",
                        _throughput(
                            key,
                            label,
                            latency_ms,
                            partial(measure, latency_ms, plan.n, plan.budget_seconds, log_dir),
                        ),
                    )
            rows += [median_round(found) for found in rounds.values() if found]
    if "latency" in sections:
        for system in systems:
            if system.measures_latency:
                rows.extend(step(f"latency {system.key}", _latency(system, plan, log_dir)))

    targets = check_targets(rows)
    print(render(rows, targets))
    report = {
        "meta": _meta(args, plan, pool, concurrency, started, log_dir),
        "rows": [asdict(row) for row in rows],
        "targets": [asdict(target) for target in targets],
        "failures": failures,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON written to {path}\nworker and endpoint logs in {log_dir}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny N: the CI smoke run")
    parser.add_argument("--n", type=int, default=None, help="goals per throughput run")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the JSON")
    parser.add_argument(
        "--sections",
        default="enqueue,memory,producers,throughput,latency",
        help="comma-separated subset of enqueue,memory,producers,throughput,latency",
    )
    parser.add_argument(
        "--systems",
        default=DEFAULT_SYSTEMS,
        help=f"comma-separated systems to measure (default {DEFAULT_SYSTEMS}; also "
        "plain_prefork,plain_threads8)",
    )
    parser.add_argument(
        "--latencies",
        default=None,
        help="endpoint latencies (ms) for the throughput runs (default 0,50; 50 with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved throughput rounds per system, each row the median (default 3; "
        "1 with --quick)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for another benchmark run on this machine to finish",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ARGS",
        help='an extra goalqueue worker to measure, e.g. "-c 64 --loglevel=WARNING" '
        '(leading NAME=VALUE tokens are env vars; "-A module" swaps the app)',
    )
    args = parser.parse_args(argv)
    known = {system.key for system in all_systems()} | {limit.key for limit in client_limits()}
    unknown = set(args.systems.split(",")) - known
    if unknown:
        parser.error(
            f"unknown systems {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    return args


def _throughput(
    key: str, label: str, latency_ms: float, measure: Callable[[], dict[str, Any]]
) -> Callable[[], list[Row]]:
    def run() -> list[Row]:
        result = measure()
        section = f"throughput_{latency_ms:g}ms"
        return [Row(section, key, label, result["goals_per_s"], "goals/s", result)]

    return run


def median_round(rounds: list[Row]) -> Row:
    """A system's round with the median rate (the faster middle one of an even number), its
    CPU figures with it, and every round's rate in ``extra["rounds_goals_per_s"]``."""
    ranked = sorted(rounds, key=lambda row: row.value or 0.0)
    median = ranked[len(ranked) // 2]
    median.extra["rounds_goals_per_s"] = [row.value for row in rounds]
    return median


def _latency(system: System, plan: Plan, log_dir: Path) -> Callable[[], list[Row]]:
    def run() -> list[Row]:
        result = scenarios.latency(system, plan.latency_samples, log_dir)
        return [
            Row(
                "latency",
                f"{system.key}_p50",
                f"{system.label}, p50",
                result["p50_ms"],
                "ms",
                result,
            ),
            Row(
                "latency",
                f"{system.key}_p99",
                f"{system.label}, p99",
                result["p99_ms"],
                "ms",
                result,
            ),
        ]

    return run


# --------------------------------------------------------------------------- targets


def _row(rows: list[Row], section: str, key: str) -> Row | None:
    return next((row for row in rows if row.section == section and row.key == key), None)


def _value(rows: list[Row], section: str, key: str) -> float | None:
    row = _row(rows, section, key)
    return None if row is None else row.value


def _cpu(rows: list[Row], section: str, key: str, party: str) -> float | None:
    """A throughput row's CPU µs per goal of one party (worker, client, endpoint, redis)."""
    row = _row(rows, section, key)
    return None if row is None else row.extra.get("cpu_us_per_goal", {}).get(party)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or not bottom:
        return None
    return round(top / bottom, 2)


def _at_least(name: str, value: float | None, bound: float, suffix: str = "") -> Target:
    return Target(name, value, f">= {bound}{suffix}", None if value is None else value >= bound)


def _at_most(name: str, value: float | None, bound: float) -> Target:
    return Target(name, value, f"<= {bound}", None if value is None else value <= bound)


def check_targets(rows: list[Row]) -> list[Target]:
    """The issue's targets, as ratios of numbers measured side by side in this run."""

    def at(latency: str, key: str) -> float | None:
        return _value(rows, f"throughput_{latency}", key)

    def versus(latency: str, top: str, bottom: str) -> float | None:
        return _ratio(at(latency, top), at(latency, bottom))

    single = _value(rows, "enqueue", "track_goal")
    cpu_ratio = _ratio(
        _cpu(rows, "throughput_50ms", "goalqueue_process", "worker"),
        _cpu(rows, "throughput_50ms", "client_limit_process", "client"),
    )
    return [
        _at_least("one node @50ms (goals/s)", at("50ms", "goalqueue_node"), 1000),
        _at_least(
            "one process / client limit 1 process @50ms",
            versus("50ms", "goalqueue_process", "client_limit_process"),
            0.85,
        ),
        _at_least(
            "one node / client limit per core @50ms",
            versus("50ms", "goalqueue_node", "client_limit_node"),
            0.85,
        ),
        _at_least(
            "one process / plain threads -c 100 @50ms",
            versus("50ms", "goalqueue_process", "plain_threads100"),
            4,
            "x",
        ),
        _at_least(
            "one process / client limit 1 process @0ms",
            versus("0ms", "goalqueue_process", "client_limit_process"),
            0.85,
        ),
        _at_least(
            "one node / client limit per core @0ms",
            versus("0ms", "goalqueue_node", "client_limit_node"),
            0.85,
        ),
        _at_most(
            "enqueue-to-delivered p50, idle (ms)",
            _value(rows, "latency", "goalqueue_process_p50"),
            10,
        ),
        _at_most("worker CPU/goal / client limit CPU/request @50ms", cpu_ratio, 1.1),
        _at_most(
            "track_goal / bare apply_async (time)",
            _ratio(single, _value(rows, "enqueue", "apply_async")),
            1.0,
        ),
        _at_least(
            "track_goal / track_goals per goal (time)",
            _ratio(single, _value(rows, "enqueue", "track_goals")),
            5,
            "x",
        ),
        _at_most(
            "track_goal / raw LPUSH, median of rounds",
            _value(rows, "enqueue", "track_goal_vs_lpush"),
            2.0,
        ),
        _at_least(
            "async producer, one process (goals/s)",
            _value(rows, "producers", "async_rate"),
            5000,
        ),
        _at_most("memory per ready goal (B)", _value(rows, "memory", "goalqueue_ready"), 500),
        _at_most("memory per waiting goal (B)", _value(rows, "memory", "goalqueue_waiting"), 500),
        _at_most(
            "memory per delivered goal (B)", _value(rows, "memory", "goalqueue_delivered"), 64
        ),
    ]


# --------------------------------------------------------------------------- output

_TITLES = {
    "enqueue": "1. Enqueue cost",
    "producers": "1b. Producers: the asyncio producer, threads, a Redis hang",
    "throughput_0ms": "2a. Delivery throughput, endpoint latency 0 ms (steady state)",
    "throughput_50ms": "2b. Delivery throughput, endpoint latency 50 ms (steady state)",
    "memory": "3. Redis memory per queued goal",
    "latency": "4. Enqueue-to-delivered latency, idle system",
}


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def _note(row: Row) -> str:
    extra = row.extra
    if row.section.startswith("throughput"):
        cpu = extra.get("cpu_us_per_goal", {})
        parts = [f"{extra['delivered']}/{extra['enqueued']} in {extra['seconds']} s"]
        if not extra["complete"]:
            parts.append("!! incomplete within the budget")
        if extra.get("errors"):
            parts.append(f"!! {extra['errors']} failed requests")
        if extra.get("duplicates"):
            parts.append(f"!! {extra['duplicates']} duplicate deliveries")
        if "settled" in extra:
            parts.append(f"settled {extra['settled']}")
        if cpu:
            parts.append(
                "CPU µs/goal " + " ".join(f"{k}={v}" for k, v in cpu.items() if k != "harness")
            )
        rates = extra.get("rounds_goals_per_s", [])
        if len(rates) > 1:
            parts.append("median of rounds " + " / ".join(_fmt(rate) for rate in rates))
        parts.append(_load(extra))
        return ", ".join(p for p in parts if p)
    if row.section == "memory":
        return ", ".join(f"{k}={v}" for k, v in extra.items() if k != "n")
    if row.section == "latency" and row.key.endswith("p99"):
        return ", ".join(
            p
            for p in (f"max {extra['max_ms']} ms over {extra['samples']} goals", _load(extra))
            if p
        )
    if row.section == "enqueue" and "rounds" in extra:
        return f"rounds {extra['rounds']}"
    if row.section == "enqueue":
        return f"n={extra['n']}, runs {extra['runs_us']}"
    if row.section == "producers":
        return ", ".join(f"{k}={v}" for k, v in extra.items())
    return ""


def _load(extra: dict[str, Any]) -> str:
    """A warning when other processes kept the machine busy during the measurement."""
    foreign = extra.get("foreign_cores", 0.0)
    return f"!! {foreign} cores busy with foreign load" if foreign >= 0.15 else ""


def render(rows: list[Row], targets: list[Target]) -> str:
    """The results as a plain-text table, section by section, then the targets."""
    width = max((len(row.label) for row in rows), default=20) + 2
    lines: list[str] = []
    sections = list(_TITLES)
    sections += sorted({row.section for row in rows} - set(sections))
    for section in sections:
        title = _TITLES.get(section, section.replace("_", " @ "))
        selected = [row for row in rows if row.section == section]
        if not selected:
            continue
        lines += ["", title]
        for row in selected:
            lines.append(f"  {row.label:<{width}}{_fmt(row.value):>10} {row.unit:<8} {_note(row)}")
    lines += ["", "Targets (ratios from this run)"]
    name_width = max((len(target.name) for target in targets), default=40) + 2
    for target in targets:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[target.met]
        value = (
            "-"
            if target.value is None
            else (f"{target.value:.2f}" if abs(target.value) < 10 else _fmt(target.value))
        )
        lines.append(f"  {target.name:<{name_width}}{value:>10}  {target.goal:<9}{verdict}")
    return "\n".join(lines)


def _meta(
    args: argparse.Namespace,
    plan: Plan,
    pool: str,
    concurrency: int,
    started: float,
    log_dir: Path,
) -> dict[str, Any]:
    return {
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        "quick": args.quick,
        "plan": asdict(plan),
        "goalqueue_pool": pool,
        "goalqueue_concurrency": concurrency,
        "max_in_flight": Settings().max_in_flight,
        "endpoint": "benchmarks.endpoint (minimal asyncio HTTP/1.1 server, own process)",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": _commit(),
        "started": started,
        "seconds": round(time.time() - started, 1),
        "logs": str(log_dir),
    }


def _commit() -> str | None:
    if os.environ.get("BENCH_COMMIT"):  # a run from an exported tree (git archive) says so
        return os.environ["BENCH_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
