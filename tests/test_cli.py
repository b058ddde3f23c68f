"""The goalqueue command, run through click's CliRunner against the real Redis, and in fresh
interpreters where an extra's packages cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from goalqueue import GoalQueue
from goalqueue.cli import main
from goalqueue.config import get_settings
from goalqueue.deadletters import DeadLetters
from goalqueue.event import GoalEvent
from goalqueue.markers import Markers
from goalqueue.scripts import Scripts
from tests.helpers.deadletters import die, kill
from tests.helpers.settings import KEYS
from tests.helpers.spool import spooled_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def run(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", redis_url)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


def bury(client: redis.Redis, queue: GoalQueue, visitor: str, status: int, reason: str) -> str:
    """Enqueue a goal and move it straight to the dead letters, as a worker would."""
    return kill(client, queue, visitor, status=status, reason=reason)


def test_send_prints_the_event_id_of_the_enqueued_goal(run, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    result = run("send", "visitor-1", "signup", "--metadata", "plan=pro", "-d", "first")
    assert result.exit_code == 0
    event_id = result.output.strip()
    (raw,) = redis_client.zrange(KEYS.ledger, 0, -1)
    event = GoalEvent.from_json(raw)
    assert (event.event_id, event.metadata, event.description) == (
        event_id,
        {"plan": "pro"},
        "first",
    )


def test_send_with_an_event_id_enqueues_it_once(run, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    event_id = "6f1d7c42-54b5-4f5b-a0e4-0a4f3c55b9de"
    for _ in range(2):
        result = run("send", "visitor-1", "signup", "--event-id", event_id)
        assert (result.exit_code, result.output.strip()) == (0, event_id)
    assert redis_client.zcard(KEYS.ledger) == 1 == redis_client.llen(KEYS.queue)


def test_send_with_a_spool_keeps_the_goal_while_redis_is_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("GOALQUEUE_SPOOL_DIR", str(tmp_path / "spool"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["send", "v", "signup"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0
    assert [event_id for event_id, _ in spooled_rows(tmp_path / "spool")] == [result.output.strip()]


def test_send_with_invalid_fields_exits_2_with_every_error_and_no_traceback(
    run, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    result = run("send", "a visitor", "identify", "--metadata", "Bad=1")
    assert result.exit_code == 2
    assert "visitor_id:" in result.output and "name:" in result.output
    assert "metadata:" in result.output
    assert "Traceback" not in result.output
    assert redis_client.dbsize() == 0


def test_send_with_unreachable_redis_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS", "0.5")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["send", "v", "signup"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "could not enqueue" in result.output and "Traceback" not in result.output


def test_stats_json_reports_every_count(run, queue: GoalQueue, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    queue.track_goal("v", "signup")
    bury(redis_client, queue, "w", 404, "unknown_visitor")
    redis_client.set(KEYS.delivered_count, 7)
    redis_client.hset(KEYS.pause, mapping={"until": 2e9, "reason": "rate_limited"})
    stats = json.loads(run("stats", "--json").output)
    assert stats["queued"] == 1 and stats["waiting"] == 0
    assert stats["delivered"] == 7 and stats["dead"] == 1
    assert stats["paused_until"] == 2e9
    assert run("stats").exit_code == 0


def test_dead_list_replay_and_purge(run, queue: GoalQueue, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    # Given two dead letters
    first = bury(redis_client, queue, "v1", 404, "unknown_visitor")
    second = bury(redis_client, queue, "v2", 400, "bad_request")
    # When they are listed as JSON, each carries what an operator needs
    listed = {row["event_id"]: row for row in json.loads(run("dead", "list", "--json").output)}
    assert set(listed) == {first, second}
    row = listed[first]
    assert (row["visitor_id"], row["name"], row["status_code"]) == ("v1", "signup", 404)
    assert (row["reason"], row["attempts"]) == ("unknown_visitor", 1)
    assert first in run("dead", "list").output
    # When one is replayed, it leaves the dead letters and is queued under the same id
    result = run("dead", "replay", first)
    assert result.exit_code == 0 and "replayed 1 of 1" in result.output
    assert [json.loads(m)["headers"]["id"] for m in redis_client.lrange(KEYS.queue, 0, -1)] == [
        first
    ]
    (raw,) = redis_client.zrange(KEYS.ledger, 0, -1)
    assert GoalEvent.from_json(raw).attempts == 0
    assert DeadLetters(redis_client, KEYS).get(first) is None
    # Replaying it again, or an unknown id, says so and exits non-zero
    assert run("dead", "replay", first, "nope").exit_code == 1
    # Purge asks first, then empties the dead letters
    assert run("dead", "purge", input="n\n").exit_code == 1
    assert run("dead", "purge", "--yes").output.strip() == "purged 1 dead letter(s)"
    assert run("dead", "list").output.strip() == "no dead letters"


def test_dead_replay_all(run, queue: GoalQueue, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    ids = {bury(redis_client, queue, f"v{i}", 404, "unknown_visitor") for i in range(3)}
    assert "replayed 3 of 3" in run("dead", "replay", "--all").output
    queued = {json.loads(m)["headers"]["id"] for m in redis_client.lrange(KEYS.queue, 0, -1)}
    assert queued == ids
    assert run("dead", "replay").exit_code == 2


# ----------------------------------------------------------------------- without an extra

WORKER_PACKAGES = ("celery", "kombu", "httpx", "httpx_aiohttp", "aiohttp", "packaging")
SANDBOX_PACKAGES = ("starlette", "uvicorn")

NOT_INSTALLED = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = set(sys.argv[1].split(","))


    class NotInstalled(MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name in BLOCKED or name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, NotInstalled())
    from goalqueue.cli import main

    main(sys.argv[2:], prog_name="goalqueue")
    """
)


def goalqueue_without(blocked: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """``goalqueue ARGS`` in a fresh interpreter where ``blocked`` modules (and their
    submodules) fail to import as packages that are not installed do."""
    return subprocess.run(
        [sys.executable, "-c", NOT_INSTALLED, ",".join(blocked), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "blocked", "extra"),
    [
        pytest.param(("worker", "--processes", "2"), WORKER_PACKAGES, "worker", id="worker"),
        pytest.param(("sandbox", "--port", "8765"), SANDBOX_PACKAGES, "sandbox", id="sandbox"),
        pytest.param(("sandbox", "--help"), SANDBOX_PACKAGES, "sandbox", id="sandbox-help"),
        pytest.param(("demo",), SANDBOX_PACKAGES, "demo", id="demo-without-sandbox"),
        pytest.param(("metrics",), ("prometheus_client",), "metrics", id="metrics"),
        # The demo's own modules import; only its worker, a child process, needs Celery
        pytest.param(("demo",), ("celery",), "demo", id="demo-without-celery"),
    ],
)
def test_a_command_without_its_extra_says_in_one_line_what_to_install(
    args: tuple[str, ...], blocked: tuple[str, ...], extra: str
) -> None:
    # Given an install without the packages of the command's extra
    # When the command runs
    result = goalqueue_without(blocked, *args)
    # Then it exits 1 with one line naming the extra to install, and no traceback
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"goalqueue {args[0]} needs the {extra} extra (no module named ")
    assert line.endswith(f": pip install 'goalqueue[{extra}]'")
    assert result.stdout == ""


def test_help_lists_every_command_without_any_extra() -> None:
    blocked = (*WORKER_PACKAGES, *SANDBOX_PACKAGES, "fakeredis", "prometheus_client")
    result = goalqueue_without(blocked, "--help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line}
    assert listed == {
        "dead",
        "demo",
        "metrics",
        "pause",
        "resume",
        "sandbox",
        "send",
        "show",
        "spool",
        "stats",
        "upgrade",
        "worker",
    }
    assert "Not installed: pip install 'goalqueue[metrics]'" in result.stdout
    assert "Not installed: pip install 'goalqueue[sandbox]'" in result.stdout
    assert "Not installed: pip install 'goalqueue[demo]'" in result.stdout


def test_a_missing_module_outside_the_extra_is_not_taken_for_a_missing_extra() -> None:
    # Given a sandbox whose own module is missing (a broken install, not a missing extra)
    result = goalqueue_without(("goalqueue.sandbox.faults",), "sandbox")
    # Then the import error is not disguised as advice to install the extra
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'goalqueue.sandbox.faults'" in result.stderr
    assert "pip install" not in result.stderr


def test_corrupt_dead_letters_are_reported_and_the_rest_listed_replayed_and_purged(  # type: ignore[no-untyped-def]
    run, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given three dead letters, and three values of the dead-letter hash that are not one
    good = {bury(redis_client, queue, f"v{i}", 404, "unknown_visitor") for i in range(3)}
    misfiled = json.loads(redis_client.hget(KEYS.dead, min(good)) or "")
    corrupt = {
        "x": "{not json",
        "a-list": "[]",
        "misfiled": json.dumps({**misfiled, "event_id": "elsewhere"}),
    }
    redis_client.hset(KEYS.dead, mapping=corrupt)
    # Written by hand, they are in no index: the commands say so, and recount indexes them
    assert "3 dead letter(s) in no index" in run("dead", "list").stderr
    recounted = run("dead", "recount")
    assert recounted.stdout.strip() == "recounted: 3 index entr(ies) added, 0 removed"

    # When the operator lists them: the good ones as usual, the corrupt ones reported on stderr
    listed = run("dead", "list")
    assert listed.exit_code == 0
    assert all(event_id in listed.stdout for event_id in good)
    assert "skipped: 3 corrupt dead letter(s)" in listed.stderr
    assert all(f"  {field}: not a dead letter" in listed.stderr for field in ("x", "a-list"))
    assert "misfiled: stored under another event id" in listed.stderr
    # And as JSON: every one, the corrupt ones flagged, with their text and why
    rows = {row["event_id"]: row for row in json.loads(run("dead", "list", "--json").stdout)}
    assert {field for field, row in rows.items() if row["corrupt"]} == set(corrupt)
    assert {field for field, row in rows.items() if not row["corrupt"]} == good
    assert rows["x"]["raw"] == "{not json" and "JSONDecodeError" in rows["x"]["error"]
    assert rows["x"]["reason"] is None and set(rows["x"]) == set(rows[min(good)])

    # When they replay every letter: the good ones are back on the queue, the corrupt ones stay
    replayed = run("dead", "replay", "--all")
    assert replayed.exit_code == 0 and "replayed 3 of 6" in replayed.stdout
    assert "not replayed: 3 corrupt dead letter(s)" in replayed.stderr
    queued = {json.loads(m)["headers"]["id"] for m in redis_client.lrange(KEYS.queue, 0, -1)}
    assert queued == good
    assert set(redis_client.hkeys(KEYS.dead)) == set(corrupt)
    # And naming a corrupt one says so and exits non-zero
    named = run("dead", "replay", "x")
    assert named.exit_code == 1 and "  x: not a dead letter" in named.stderr

    # When they purge: corrupt letters are kept unless asked for
    bury(redis_client, queue, "v9", 400, "bad_request")
    purged = run("dead", "purge", "--yes")
    assert purged.stdout.strip() == "purged 1 dead letter(s)"
    assert "kept (delete them with --corrupt): 3 corrupt" in purged.stderr
    assert set(redis_client.hkeys(KEYS.dead)) == set(corrupt)
    assert run("dead", "purge", "--yes", "--corrupt").stdout.strip() == "purged 3 dead letter(s)"
    assert redis_client.hlen(KEYS.dead) == 0


# ------------------------------------------------------------------- dead letters by filters


def dead_ids(run: Callable[..., Result], *args: str) -> list[str]:
    """The event ids ``goalqueue dead list --json ARGS`` prints, in its order."""
    result = run("dead", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [row["event_id"] for row in json.loads(result.stdout)]


def test_each_filter_selects_the_dead_letters_it_names(  # type: ignore[no-untyped-def]
    run, queue: GoalQueue, redis_client: redis.Redis
) -> None:
    # Given dead letters of four reasons, two names and four statuses, dead hours apart, their
    # goals enqueued in another order
    now = time.time()

    def ago(hours: float) -> float:
        return now - hours * 3600

    def letter(name: str, status: int | None, reason: str, died: float, enqueued: float) -> str:
        return kill(
            redis_client, queue, name=name, status=status, reason=reason,
            dead_at=ago(died), enqueued_at=ago(enqueued),
        )  # fmt: skip

    a = letter("signup", 404, "unknown_visitor", died=50, enqueued=1)
    b = letter("signup", 400, "bad_request", died=30, enqueued=60)
    c = letter("purchase", 422, "client_error", died=20, enqueued=40)
    d = letter("purchase", None, "maybe_delivered", died=10, enqueued=12)
    e = letter("signup", 404, "unknown_visitor", died=2, enqueued=3)
    local = datetime.fromtimestamp(ago(35)).isoformat(timespec="seconds")

    # When they are listed with each filter, Then each selects its letters, oldest first
    cases: dict[tuple[str, ...], list[str]] = {
        (): [a, b, c, d, e],
        ("--reason", "unknown_visitor"): [a, e],
        ("--reason", "bad_request", "--reason", "client_error"): [b, c],
        ("--name", "purchase"): [c, d],
        ("--status", "404"): [a, e],
        ("--status", "4xx"): [a, b, c, e],
        ("--status", "none"): [d],
        ("--since", "24h"): [c, d, e],
        ("--until", "1d"): [a, b],
        ("--since", local, "--until", f"{ago(15):.0f}"): [b, c],
        ("--by", "enqueued", "--since", "24h"): [a, d, e],
        ("--by", "enqueued", "--until", "24h"): [b, c],
        ("--limit", "2"): [a, b],
        ("--name", "signup", "--status", "4xx", "--since", "40h", "--limit", "1"): [b],
        ("--reason", "expired"): [],
    }
    for args, selected in cases.items():
        assert dead_ids(run, *args) == selected, args
    # And a value that is not a filter is refused in one line, exit 2
    for bad in [
        ("--since", "yesterday"),
        ("--status", "99"),
        ("--reason", "lost"),
        ("--limit", "0"),
    ]:
        refused = run("dead", "list", *bad)
        assert refused.exit_code == 2 and f"Invalid value for '{bad[0]}'" in refused.output
        assert "Traceback" not in refused.output


def test_a_dry_run_shows_the_count_and_the_oldest_letters_and_changes_nothing(  # type: ignore[no-untyped-def]
    run, queue: GoalQueue, redis_client: redis.Redis, redis_url: str
) -> None:
    # Given 12 dead letters for unknown visitors and one bad request
    now = time.time()
    unknown = [kill(redis_client, queue, f"v{i}", dead_at=now - 100 + i) for i in range(12)]
    bad = kill(redis_client, queue, "w", status=400, reason="bad_request")
    raw = redis.Redis.from_url(redis_url)
    before = {key: raw.dump(key) for key in raw.scan_iter()}

    # When replay and purge run with --dry-run
    for verb in ("replay", "purge"):
        result = run("dead", verb, "--status", "404", "--dry-run")
        # Then each prints how many letters it would act on and the 10 oldest, as a table
        assert result.exit_code == 0, result.output
        heading, columns, *rows = result.stdout.splitlines()
        assert heading == f"12 dead letter(s) to {verb}; the oldest 10:"
        assert columns.split()[:3] == ["EVENT_ID", "DIED", "NAME"]
        assert [row.split()[0] for row in rows] == unknown[:10]
    # And purge asks first, showing the same; a no changes nothing either
    asked = run("dead", "purge", "--reason", "bad_request", input="n\n")
    assert asked.exit_code == 1 and "1 dead letter(s) to purge:" in asked.stdout
    assert bad in asked.stdout and "Delete them for good?" in asked.stdout
    assert {key: raw.dump(key) for key in raw.scan_iter()} == before
    # And with nothing to delete it says so and asks nothing
    nothing = run("dead", "purge", "--reason", "expired")
    assert (nothing.exit_code, nothing.stdout) == (0, "no dead letter to purge\n")

    # When purge runs for real with the same filters and a limit, it deletes those alone
    assert run("dead", "purge", "--status", "404", "--limit", "5", "--yes").stdout == (
        "purged 5 dead letter(s)\n"
    )
    assert dead_ids(run) == [*unknown[5:], bad]


def test_an_interrupted_replay_goes_on_where_it_stopped_and_replays_nothing_twice(  # type: ignore[no-untyped-def]
    run, queue: GoalQueue, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 260 goals dead in the last hour, and 5 dead before the window the filter names
    now = time.time()
    letters = [kill(redis_client, queue, f"v{i}", dead_at=now - 3600 + i) for i in range(260)]
    older = [kill(redis_client, queue, f"o{i}", dead_at=now - 3 * 3600 + i) for i in range(5)]
    replay = ("dead", "replay", "--since", "2h")

    # When a first run replays the 50 oldest (--limit)
    first = run(*replay, "--limit", "50")
    assert first.exit_code == 0 and first.stdout == "replayed 50 of 50 dead letter(s)\n"
    # And one of those goals dies again meanwhile
    again = letters[0]
    die(redis_client, again)
    # And the next run loses its connection to Redis after one batch of 100
    batches = []
    replay_batch = Scripts.replay

    def dropped(scripts: Scripts, goals: list[tuple[str, str]]) -> list[int]:
        batches.append(len(goals))
        if len(batches) > 1:
            raise redis.ConnectionError("Connection reset by peer")
        return replay_batch(scripts, goals)

    monkeypatch.setattr(Scripts, "replay", dropped)
    second = run(*replay)
    monkeypatch.setattr(Scripts, "replay", replay_batch)
    assert second.exit_code == 1 and batches == [100, 100]
    assert "resuming the replay begun" in second.stderr
    assert "stopped after replaying 100 dead letter(s): run the same command again" in (
        second.stderr
    )

    # Then the same command once more replays the rest, and leaves the goal dead again since
    # the first run for another run
    third = run(*replay)
    assert third.exit_code == 0 and third.stdout == "replayed 110 of 110 dead letter(s)\n"
    queued = [json.loads(m)["headers"]["id"] for m in redis_client.lrange(KEYS.queue, 0, -1)]
    assert len(queued) == len(set(queued)) == 259 and set(queued) == set(letters) - {again}
    assert dead_ids(run) == [*older, again]
    # And once a run has gone through every letter, the next one starts afresh
    assert run(*replay).stdout == "replayed 1 of 1 dead letter(s)\n"


def test_upgrade_packs_the_delivered_markers_an_older_goalqueue_kept(  # type: ignore[no-untyped-def]
    run, redis_client: redis.Redis, queue: GoalQueue
) -> None:
    # Given delivered markers as goalqueue kept them before packing: a string key a goal
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for n, event_id in enumerate(ids[:2]):
        redis_client.set(f"{KEYS.delivered}:{event_id}", f"{n:024x}", px=3_600_000)
    redis_client.set(f"{KEYS.delivered}:{ids[2]}", "")  # one with no expiry

    # When goalqueue upgrade runs
    result = run("upgrade")

    # Then each is a packed marker with DataFast's id, and the old keys are gone
    assert "delivered markers packed: 3" in result.output, result.output
    found = Markers(redis_client, KEYS).find(ids)
    assert {i: m.remote_id for i, m in found.items()} == {
        ids[0]: f"{0:024x}", ids[1]: f"{1:024x}", ids[2]: ""
    }  # fmt: skip
    assert not list(redis_client.scan_iter(match=f"{KEYS.delivered}:*", _type="STRING"))
    # And enqueueing one of them again adds nothing
    queue.track_goal("v", "signup", event_id=ids[0])
    assert redis_client.zcard(KEYS.ledger) == 0
    # And a second run finds nothing more to do
    assert "delivered markers packed: 0" in run("upgrade").output
