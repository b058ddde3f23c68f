"""Chaos: goals keep flowing through killed workers, restarted Redis and every DataFast fault.

The run enqueues goals in batches all along, and in every phase SIGKILLs workers at random
moments (each replaced at once) while one fault is on:

    flow    nothing but the kills
    hang    DataFast holds requests past the HTTP timeout; released as 503s when it ends
    503     every request fails with 503
    429     a storm of 429s with Retry-After: 1
    403     the website is suspended
    401     DataFast stops accepting the workers' key, then accepts it again
    redis   (long form) the test's own redis-server restarted mid-flow: SIGTERM in the first
            round, SIGKILL in the second

and the test's redis-server (AOF on, appendfsync always) is restarted with SIGTERM during the
403 phase, with goals queued, waiting and in the ledger.

Then it waits for the queue to drain and checks what the issue asks: no valid goal lost,
duplicates at the endpoint no more than the requests DataFast was processing at the kills (read
from the sandbox just before each) plus two per kill or restart, every 400/404 goal
dead-lettered exactly once and
nothing else, and ``goalqueue stats`` agreeing with the endpoint.

The short form runs in CI. The long form runs with ``GOALQUEUE_CHAOS=long`` and prints a summary,
also written as JSON to ``GOALQUEUE_CHAOS_REPORT`` (default: the test's tmp dir):

    GOALQUEUE_CHAOS=long pytest tests/test_chaos.py -k long -s

``GOALQUEUE_CHAOS_SEED`` changes the kill moments; ``GOALQUEUE_CHAOS_LATENCY_MS`` adds latency
to every DataFast answer (duplicates grow with it: each request in flight at a SIGKILL is
accepted by DataFast and sent again).
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from goalqueue import GoalQueue
from goalqueue.deadletters import DeadLetters
from goalqueue.event import GoalEvent
from goalqueue.sandbox import Sandbox
from tests.helpers.forms import short_and_long
from tests.helpers.markers import marker
from tests.helpers.messages import pop_message
from tests.helpers.redis_server import RedisServer
from tests.helpers.scheduling import TIMED
from tests.helpers.settings import API_KEY, KEYS, quick_settings
from tests.helpers.waiting import wait_for
from tests.helpers.workers import WorkerProcess, Workers, worker_env
from workers.engine import Engine
from workers.sweeper import Sweeper

# Duplicates a disruption may cost beyond the requests DataFast is still processing: answers a
# worker had received and not yet recorded.
UNRECORDED_PER_DISRUPTION = 2
CONCURRENCY = "8"


@dataclass(frozen=True)
class Form:
    """How big and how rough one chaos run is."""

    name: str
    goals: int  # in all, the bad ones included
    bad_each: int  # goals DataFast refuses with 400 (bots), and as many with 404 (no pageview)
    kills: int  # at least this many SIGKILLs
    rounds: int  # each phase runs once per round
    phase_seconds: float  # each phase lasts at least this long
    phases: tuple[str, ...]
    redis_kill_rounds: frozenset[int] = frozenset()  # rounds whose "redis" phase SIGKILLs it
    timeout: float = 90.0


PHASES = ("flow", "hang", "503", "429", "403", "401", "redis")
HELD_BACK = frozenset({"429", "403", "401"})  # phases in which delivery is paused
# Duplicates come from kills: a request DataFast is processing at a SIGKILL is accepted and sent
# again. A Redis restart while goals are being delivered costs duplicates too, until the
# delivery path retries its settle (see the README): the short form restarts Redis while
# delivery is paused (403), the long form also mid-flow.
SHORT = Form(
    "short", goals=3000, bad_each=20, kills=8, rounds=1, phase_seconds=2.5, phases=PHASES[:-1]
)
LONG = Form(
    "long",
    goals=8000,
    bad_each=50,
    kills=30,
    rounds=2,
    phase_seconds=5.0,
    phases=PHASES,
    redis_kill_rounds=frozenset({1}),
    timeout=600.0,
)


@dataclass
class Goals:
    """The goals of the run by what DataFast will answer them."""

    valid: set[str] = field(default_factory=set)
    bad_request: set[str] = field(default_factory=set)  # 400: the visitor is a bot
    unknown_visitor: set[str] = field(default_factory=set)  # 404: no pageview

    @property
    def bad(self) -> set[str]:
        return self.bad_request | self.unknown_visitor

    def __len__(self) -> int:
        return len(self.valid) + len(self.bad)


class Chaos:
    """One run: the Redis, the sandbox, the workers, and the faults injected so far."""

    def __init__(
        self, form: Form, server: RedisServer, sandbox: Sandbox, workers: Workers, seed: int
    ) -> None:
        self.form = form
        self.server = server
        self.sandbox = sandbox
        self.workers = workers
        self.rng = random.Random(seed)
        self.queue = GoalQueue(settings=quick_settings(server.url))
        self.goals = Goals()
        self.faults: Counter[str] = Counter()
        self.live: list[WorkerProcess] = []
        self.in_flight_at_kills: list[int] = []
        self.floors: list[int] = []  # goal requests the sandbox was processing at each kill
        self.disruptions: list[float] = []  # when a worker was killed or Redis restarted
        phases = form.rounds * len(form.phases)
        self.batches = _split(form.goals, phases)
        self.bad_batches = _split(form.bad_each, phases)
        self.kills_per_phase = _spread_kills(form)

    # ----------------------------------------------------------------- goals

    def enqueue(self, index: int, count: int) -> None:
        """Enqueue ``count`` goals; the first batch of phase ``index`` brings its bad goals."""
        bad, self.bad_batches[index] = self.bad_batches[index], 0
        valid = count - 2 * bad
        start = len(self.goals)
        goals = [{"visitor_id": f"v{start + i}", "name": "signup"} for i in range(valid)]
        goals += [{"visitor_id": f"bot{start + i}", "name": "signup"} for i in range(bad)]
        goals += [{"visitor_id": f"ghost{start + i}", "name": "signup"} for i in range(bad)]
        self.sandbox.register_visitors(*(g["visitor_id"] for g in goals[:valid]))
        self.sandbox.add_bots(*(g["visitor_id"] for g in goals[valid : valid + bad]))
        ids = self.queue.track_goals(goals)
        self.goals.valid.update(ids[:valid])
        self.goals.bad_request.update(ids[valid : valid + bad])
        self.goals.unknown_visitor.update(ids[valid + bad :])

    # ----------------------------------------------------------------- workers

    def start_worker(self, ready: bool = False) -> None:
        self.live.append(self.workers.start("-c", CONCURRENCY, ready=ready))

    def enqueue_then_kill(self, index: int, count: int, *, kill: bool) -> None:
        self.enqueue(index, count)
        if kill:
            time.sleep(self.rng.uniform(0.0, 0.25))  # a random moment, not a wait for a condition
            self.kill_one()

    def kill_one(self) -> None:
        """SIGKILL a worker (a ready one if there is one) and start its replacement."""
        ready = [w for w in self.live if "ready." in w.output()] or self.live
        victim = self.rng.choice(ready)
        self.in_flight_at_kills.append(self.in_flight())
        self.floors.append(self.sandbox.stats().in_flight)
        victim.kill()
        self.disruptions.append(time.time())
        self.live.remove(victim)
        self.faults["worker_sigkill"] += 1
        self.start_worker()

    def in_flight(self) -> int:
        """Goals taken off the queue and not settled yet, as ``goalqueue stats`` counts them."""
        with self.queue.redis.pipeline() as pipe:
            pipe.zcard(KEYS.ledger)
            pipe.llen(KEYS.queue)
            ledger, queued = pipe.execute()
        return max(0, int(ledger) - int(queued))

    def run_until(self, until: float, actions: list[Callable[[], None]]) -> None:
        """Run ``actions`` in a random order at random moments before ``until``, then wait."""
        self.rng.shuffle(actions)
        for left in range(len(actions), 0, -1):
            # A random moment to act (a kill, a batch): deliberately not a wait for a condition.
            time.sleep(self.rng.uniform(0, max(0.0, until - time.monotonic()) / left))
            actions.pop()()
        time.sleep(max(0.0, until - time.monotonic()))

    # ----------------------------------------------------------------- faults

    def phase(self, index: int, name: str, round_: int) -> None:
        """Fault ``name`` on for a while, goals trickling in and workers SIGKILLed meanwhile.

        The phase's goals come in four batches, the first as the fault starts; a kill follows a
        batch at a random moment within a quarter of a second, so that it finds goals on their
        way (where the fault lets them move).
        """
        first, *rest = _split(self.batches[index], 4)
        kills = self.kills_per_phase[index]
        batches: list[Callable[[], None]] = [
            functools.partial(self.enqueue_then_kill, index, n, kill=i < kills)
            for i, n in enumerate(rest)
        ]
        batches += [self.kill_one] * max(0, kills - len(rest))
        self.enqueue(index, first)
        until = time.monotonic() + self.form.phase_seconds
        if name == "redis":  # restarted while goals are being delivered
            sig = signal.SIGKILL if round_ in self.form.redis_kill_rounds else signal.SIGTERM
            self.run_until(until, [*batches, lambda: self.restart_redis(sig)])
            return
        if name != "flow":
            self.faults[f"phase_{name}"] += 1
        status = {"503": 503, "429": 429, "403": 403, "401": 401}.get(name)
        seen = self.sandbox.state.count(status) if status else 0
        FAULT_ON[name](self.sandbox)
        # The fault must have hit goals before the phase may end.
        if status:
            wait_for(lambda: self.sandbox.state.count(status) > seen, 30)
        elif name == "hang":
            wait_for(lambda: self.timeouts_waiting() > 0, 30)
        extra = []
        if name == "403":  # restarted while delivery is paused, goals waiting in Redis
            extra.append(lambda: self.restart_redis(signal.SIGTERM))
        self.run_until(until, [*batches, *extra])
        FAULT_OFF[name](self.sandbox)

    def restart_redis(self, sig: signal.Signals) -> None:
        self.disruptions.append(time.time())
        self.server.restart(sig)
        self.faults[f"redis_restart_{sig.name.lower()}"] += 1
        wait_for(self._producer_reconnected, 30)

    def _producer_reconnected(self) -> bool:
        """the test's own Redis client works again"""
        try:
            return bool(self.queue.redis.ping())
        except redis.ConnectionError:
            return False

    def timeouts_waiting(self) -> int:
        """Goals waiting for a retry after their request timed out."""
        waiting: list[str] = self.queue.redis.zrange(KEYS.waiting, 0, -1)  # type: ignore[assignment]
        errors = [GoalEvent.from_json(raw).last_error or "" for raw in waiting]
        return sum(1 for error in errors if "Timeout" in error)

    # ----------------------------------------------------------------- the end

    def drained(self) -> bool:
        """every valid goal accepted, every bad one dead, nothing left in Redis"""
        if not self.goals.valid <= self.accepted():
            return False
        client = self.queue.redis
        return (
            client.hlen(KEYS.dead) >= len(self.goals.bad)
            and client.zcard(KEYS.ledger) == 0
            and client.zcard(KEYS.waiting) == 0
            and client.llen(KEYS.queue) == 0
        )

    def accepted(self) -> set[str]:
        return {e.idempotency_key for e in self.sandbox.events(status=200) if e.idempotency_key}


FAULT_ON: dict[str, Callable[[Sandbox], Any]] = {
    "flow": lambda sandbox: None,
    "hang": lambda sandbox: sandbox.set_faults(hang=True),
    "503": lambda sandbox: sandbox.set_faults(error_rate=1.0),
    "429": lambda sandbox: sandbox.set_faults(rate_limit=1),
    "403": lambda sandbox: sandbox.set_faults(suspended=True),
    "401": lambda sandbox: sandbox.set_key("df_other"),
}
FAULT_OFF: dict[str, Callable[[Sandbox], Any]] = {
    "flow": lambda sandbox: None,
    # The requests still hanging are answered 503 (the 503 phase comes next): DataFast gave up
    # on them. Released as 200s, each would be a duplicate no client can avoid.
    "hang": lambda sandbox: sandbox.set_faults(hang=False, error_rate=1.0),
    "503": lambda sandbox: sandbox.set_faults(error_rate=0.0),
    "429": lambda sandbox: sandbox.set_faults(rate_limit=None),
    "403": lambda sandbox: sandbox.set_faults(suspended=False),
    "401": lambda sandbox: sandbox.set_key(API_KEY),
}


def _spread_kills(form: Form) -> list[int]:
    """Kills per phase: one in each phase that holds goals back (a pause: nothing is in flight),
    the rest spread over the phases where goals move."""
    phases = [name for _ in range(form.rounds) for name in form.phases]
    held = [name in HELD_BACK for name in phases]
    moving = _split(form.kills - sum(held), len(phases) - sum(held))
    return [1 if is_held else moving.pop(0) for is_held in held]


def _split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal whole shares."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def goalqueue_cli(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``goalqueue`` command against ``broker_url``."""
    env = {**os.environ, "GOALQUEUE_BROKER_URL": broker_url}
    command = [sys.executable, "-c", "from goalqueue.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def server(redis_server: Callable[..., RedisServer]) -> RedisServer:
    return redis_server()


@pytest.fixture
def chaos_workers(tmp_path: Path, server: RedisServer, sandbox: Sandbox) -> Iterator[Workers]:
    pool = Workers(tmp_path, worker_env(quick_settings(server.url), sandbox.url))
    try:
        yield pool
    finally:
        for worker in pool.started:
            worker.kill()


FORMS = short_and_long(SHORT, LONG, SHORT.timeout + 60, LONG.timeout + 120)


@TIMED
@pytest.mark.parametrize("form", FORMS)
def test_chaos_loses_no_goal(
    form: Form,
    server: RedisServer,
    sandbox: Sandbox,
    chaos_workers: Workers,
    tmp_path: Path,
) -> None:
    # Given two workers delivering to DataFast, which knows the good visitors and the bots
    sandbox.register_visitors(mode="registered")
    sandbox.set_faults(latency_ms=float(os.environ.get("GOALQUEUE_CHAOS_LATENCY_MS", "0")))
    seed = int(os.environ.get("GOALQUEUE_CHAOS_SEED", "7"))
    chaos = Chaos(form, server, sandbox, chaos_workers, seed=seed)
    started = time.monotonic()
    chaos.start_worker(ready=True)
    chaos.start_worker(ready=True)

    # When goals flow through every fault phase, with workers SIGKILLed all along
    index = 0
    for round_ in range(form.rounds):
        for name in form.phases:
            chaos.phase(index, name, round_)
            index += 1
    last_fault = time.monotonic()
    wait_for(chaos.drained, form.timeout)
    drain_seconds = time.monotonic() - last_fault
    goals, endpoint, accepted = chaos.goals, sandbox.stats(), chaos.accepted()
    letters = {letter.event_id: letter for letter in DeadLetters(chaos.queue.redis, KEYS)}
    result = goalqueue_cli(server.url, "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    offsets = duplicate_offsets(sandbox, chaos.disruptions)
    summary = {
        "form": form.name,
        "goals": len(goals),
        "valid_goals": len(goals.valid),
        "delivered_distinct": len(accepted),
        "lost": len(goals.valid - accepted),
        "duplicates": endpoint.duplicates,
        "duplicate_rate": round(endpoint.duplicates / len(goals), 5),
        # A duplicate is first accepted right around a SIGKILL or Redis restart: a request in
        # flight that DataFast completed for a worker that never heard back.
        "duplicates_first_accepted_s_from_nearest_kill_or_restart": offsets,
        "dead_letters": len(letters),
        "dead_400": len(goals.bad_request),
        "dead_404": len(goals.unknown_visitor),
        "faults": dict(sorted(chaos.faults.items())),
        "goals_in_flight_at_each_kill": chaos.in_flight_at_kills,
        "sandbox_in_flight_at_each_kill": chaos.floors,
        "endpoint_answers": {str(k): v for k, v in sorted(endpoint.by_status.items())},
        "drain_seconds_after_last_fault": round(drain_seconds, 1),
        "run_seconds": round(time.monotonic() - started, 1),
        "goalqueue_stats": stats,
    }
    report = Path(os.environ.get("GOALQUEUE_CHAOS_REPORT", tmp_path / f"chaos-{form.name}.json"))
    report.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nchaos {form.name} summary ({report}):\n{json.dumps(summary, indent=2)}")

    # Then no worker died but the killed ones, and the kills hit goals on their way
    crashed = [w for w in chaos.live if w.process.poll() is not None]
    assert not crashed, crashed[0].output()[-3000:]
    assert chaos.faults["worker_sigkill"] >= form.kills
    assert sum(1 for n in chaos.in_flight_at_kills if n) >= form.kills // 2, summary
    # And every valid goal reached DataFast: none lost
    assert goals.valid - accepted == set()
    assert accepted <= goals.valid and endpoint.accepted_without_key == 0
    # And DataFast saw a goal twice only for requests it was processing at a kill, or for at
    # most two answers per kill or Redis restart that a worker had not recorded yet
    floor = sum(chaos.floors) + UNRECORDED_PER_DISRUPTION * len(chaos.disruptions)
    assert endpoint.duplicates <= floor, summary
    # And every goal DataFast refused for good is a dead letter, exactly once, and nothing else is
    assert set(letters) == goals.bad
    assert {letters[i].status_code for i in goals.bad_request} == {400}
    assert {letters[i].status_code for i in goals.unknown_visitor} == {404}
    # And `goalqueue stats` agrees with what the endpoint saw
    assert stats["delivered"] == len(accepted), summary
    assert stats["dead"] == len(goals.bad)
    assert (stats["queued"], stats["waiting"], stats["in_flight"]) == (0, 0, 0)


def duplicate_offsets(sandbox: Sandbox, disruptions: list[float]) -> list[float]:
    """For each goal accepted more than once: seconds from the nearest disruption to its first
    acceptance (negative: accepted just before the worker was killed)."""
    accepted: dict[str, list[float]] = {}
    for event in sandbox.events(status=200):
        accepted.setdefault(event.idempotency_key or "", []).append(event.time)
    offsets = []
    for times in accepted.values():
        if len(times) > 1:
            nearest = sorted((times[0] - moment for moment in disruptions), key=abs)
            offsets.append(round(nearest[0], 3) if nearest else 999.0)
    return sorted(offsets)


def test_delivered_counter_counts_a_goal_whose_delivering_copy_lost_the_ledger_race(
    server: RedisServer, engines: Callable[..., Engine]
) -> None:
    """Two live copies of one goal (the reconciler re-queued it while a slow worker still had
    it): one gets 503 and parks the ledger entry, the other gets 200. DataFast accepted the goal
    once, so ``goalqueue stats`` must say delivered 1."""
    settings = replace(quick_settings(server.url), max_in_flight=1)
    client = server.client()
    queue = GoalQueue(settings=settings)
    sweeper = Sweeper(settings, client)
    event_id = queue.track_goal("v", "signup")
    now = time.time()

    def second_copy_gets_503(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"status": "error", "error": {"message": "down"}})

    second_worker = engines(settings, second_copy_gets_503, rand=lambda: 0.0)

    def slow_first_copy(request: httpx.Request) -> httpx.Response:
        # While the first copy waits for DataFast, the reconciler gives up on it...
        sweeper.sweep_once(now)
        assert sweeper.sweep_once(now + settings.visibility_timeout_seconds + 1) == (0, 1)
        # ...and a second worker takes the re-queued copy, gets a 503 and parks the goal
        assert second_worker.run(*pop_message(client)).summary == "waiting (server_error)"
        # Then DataFast accepts the first copy
        return httpx.Response(200, json={"status": "success", "data": [{"eventId": "e" * 24}]})

    # When the first copy is delivered, and the parked one comes back later
    first_worker = engines(settings, slow_first_copy, rand=lambda: 0.0)
    assert first_worker.run(*pop_message(client)).summary == "delivered"
    sweeper.sweep_once(time.time() + 3600)
    assert second_worker.run(*pop_message(client)).summary == "already delivered"

    # Then the goal is settled, and counted once
    assert client.zcard(KEYS.ledger) + client.zcard(KEYS.waiting) == 0
    assert (found := marker(client, event_id)) is not None
    assert found.remote_id == "e" * 24
    assert client.get(KEYS.delivered_count) == "1"


def signups(server: RedisServer, count: int) -> set[str]:
    """A backlog of ``count`` signup goals on ``server``; their event ids."""
    queue = GoalQueue(settings=quick_settings(server.url))
    return set(queue.track_goals([{"visitor_id": f"v{i}", "name": "signup"} for i in range(count)]))


def test_sigterm_lets_in_flight_deliveries_finish_and_the_rest_go_back(
    server: RedisServer, sandbox: Sandbox, chaos_workers: Workers
) -> None:
    # Given a worker in the middle of delivering a backlog larger than it holds in flight,
    # through a slow endpoint
    sandbox.set_faults(latency_ms=300)
    ids = signups(server, 1000)
    worker = chaos_workers.start()
    wait_for(lambda: sandbox.stats().accepted >= 8)
    client = server.client()
    assert client.zcard(KEYS.ledger) - client.llen(KEYS.queue) > 0, "nothing in flight"

    # When it is told to stop with SIGTERM
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0, worker.output()[-3000:]

    # Then every goal it had started was delivered and settled, and every goal it held but had
    # not started is back on the queue: nothing waits for the reconciler
    delivered_by_first = len({e.idempotency_key for e in sandbox.events(status=200)})
    assert delivered_by_first < len(ids), "the worker was not stopped mid-flow"
    assert sandbox.stats().in_flight == 0
    assert client.get(KEYS.delivered_count) == str(delivered_by_first)
    assert client.zcard(KEYS.ledger) == client.llen(KEYS.queue) == len(ids) - delivered_by_first
    # And a new worker delivers the rest, each goal once
    sandbox.set_faults(latency_ms=0)
    successor = chaos_workers.start()
    wait_for(lambda: ids <= {e.idempotency_key for e in sandbox.events(status=200)}, 60)
    assert sandbox.stats().duplicates == 0
    assert "a lost worker had taken" not in successor.output()


def test_repeated_warm_shutdowns_under_load_lose_nothing_and_send_nothing_twice(
    server: RedisServer, sandbox: Sandbox, chaos_workers: Workers
) -> None:
    # Given two workers draining a backlog through an endpoint that answers in 50 ms
    sandbox.set_faults(latency_ms=50)
    ids = signups(server, 8000)
    live = [chaos_workers.start(), chaos_workers.start()]
    # When, four times while goals flow (every 800 goals), one of them is stopped with SIGTERM
    # and replaced
    stopped_at = []
    for round_ in range(4):
        accepted = sandbox.stats().accepted
        wait_for(lambda accepted=accepted: sandbox.stats().accepted >= accepted + 800, 30)
        victim = live.pop(round_ % 2)
        victim.process.send_signal(signal.SIGTERM)
        assert victim.process.wait(timeout=30) == 0, victim.output()[-3000:]
        stopped_at.append(sandbox.stats().accepted)
        live.insert(round_ % 2, chaos_workers.start(ready=False))
    # Then every stop came mid-flow, and every goal was delivered exactly once
    assert stopped_at[-1] < len(ids), stopped_at
    wait_for(lambda: ids <= {e.idempotency_key for e in sandbox.events(status=200)}, 90)
    assert sandbox.stats().duplicates == 0
    client = server.client()
    wait_for(lambda: client.zcard(KEYS.ledger) == 0, 30)
    assert client.get(KEYS.delivered_count) == str(len(ids))
