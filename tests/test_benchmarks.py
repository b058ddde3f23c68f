"""The benchmark harness: its smoke run completes and reports every number (no timing checks),
and a throughput row is the median of its rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import median_round
from benchmarks.scenarios import Row
from tests.helpers.databases import BENCHMARK_DBS, SERVER, flush, url
from tests.helpers.scheduling import TIMED

pytestmark = [pytest.mark.integration, TIMED]

ROOT = Path(__file__).resolve().parent.parent

THROUGHPUT_ROWS = {
    "goalqueue_process",
    "goalqueue_node",
    "plain_threads100",
    "client_limit_process",
    "client_limit_node",
}
EXPECTED_ROWS = {
    "enqueue": {"track_goal", "track_goals", "apply_async", "raw_lpush", "track_goal_vs_lpush"},
    "producers": {"async_rate", "threads_p50", "threads_p99", "hang_worst"},
    "throughput_50ms": THROUGHPUT_ROWS,
    "memory": {
        "goalqueue_ready",
        "goalqueue_waiting",
        "goalqueue_ready_single",
        "goalqueue_delivered",
        "plain_ready",
    },
    "latency": {
        f"{system}_{p}"
        for system in ("goalqueue_process", "plain_threads100")
        for p in ("p50", "p99")
    },
}
ZERO_MS_TARGETS = [
    "one process / client limit 1 process @0ms",
    "one node / client limit per core @0ms",
]
EXPECTED_TARGETS = [
    "one node @50ms (goals/s)",
    "one process / client limit 1 process @50ms",
    "one node / client limit per core @50ms",
    "one process / plain threads -c 100 @50ms",
    *ZERO_MS_TARGETS,
    "enqueue-to-delivered p50, idle (ms)",
    "worker CPU/goal / client limit CPU/request @50ms",
    "track_goal / bare apply_async (time)",
    "track_goal / track_goals per goal (time)",
    "track_goal / raw LPUSH, median of rounds",
    "async producer, one process (goals/s)",
    "memory per ready goal (B)",
    "memory per waiting goal (B)",
    "memory per delivered goal (B)",
]


@pytest.mark.timeout(300)
def test_quick_benchmark_reports_every_row_as_a_number(tmp_path: Path) -> None:
    # Given the tests' Redis, on which DBs 11 and 12 are the benchmark's own
    report = tmp_path / "bench.json"
    # When the CI smoke version of the benchmark runs
    for database in BENCHMARK_DBS:  # the run flushes them: refused if they hold other keys
        flush(url(database))
    done = subprocess.run(
        # (a full run by someone else on this machine holds the lock for a few minutes)
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--json",
            str(report),
            "--lock-timeout",
            "200",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=290,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("GOALQUEUE_")},
            "BENCH_REDIS_URL": SERVER,
        },
    )
    # Then it succeeds, prints the table and says where the JSON went
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" not in done.stderr, done.stderr[-3000:]
    assert "Enqueue cost" in done.stdout and "Targets" in done.stdout
    assert str(report) in done.stdout
    # And the JSON has every row, each with a number
    data = json.loads(report.read_text())
    found: dict[str, set[str]] = {}
    for row in data["rows"]:
        found.setdefault(row["section"], set()).add(row["key"])
        assert isinstance(row["value"], int | float), row
        assert row["value"] > 0, row
    assert found == EXPECTED_ROWS
    # And every throughput row says what each party's CPU was per goal
    for row in data["rows"]:
        if row["section"].startswith("throughput"):
            doer = "client" if row["key"].startswith("client_limit") else "worker"
            assert set(row["extra"]["cpu_us_per_goal"]) >= {doer, "endpoint"}, row
    # And every target was evaluated, met or not, and printed
    assert [target["name"] for target in data["targets"]] == EXPECTED_TARGETS
    unevaluated = [t["name"] for t in data["targets"] if not isinstance(t["value"], int | float)]
    assert unevaluated == ZERO_MS_TARGETS, done.stdout[-3000:]  # the smoke run skips 0 ms
    assert all(name in done.stdout for name in EXPECTED_TARGETS)


def test_a_throughput_row_is_the_median_round_with_every_rounds_rate() -> None:
    # Given three interleaved rounds of one system, the slowest first
    rounds = [
        Row("throughput_50ms", "goalqueue_process", "goalqueue", rate, "goals/s", {"cpu": cpu})
        for rate, cpu in ((1200.0, 700), (1700.0, 480), (1500.0, 560))
    ]

    # When the row is chosen
    row = median_round(rounds)

    # Then it is the median round, whole (its CPU figures with it), listing every round's rate
    assert (row.value, row.extra["cpu"]) == (1500.0, 560)
    assert row.extra["rounds_goals_per_s"] == [1200.0, 1700.0, 1500.0]
