"""The spool on its own: durable adds, ordered re-sends, many writers, and its CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from goalqueue import EnqueueError, GoalQueue
from goalqueue.cli import main
from goalqueue.config import Settings, get_settings
from goalqueue.event import GoalEvent
from goalqueue.goals import new_event
from goalqueue.spool import Spool
from tests.helpers.ports import dead_redis_url
from tests.helpers.redis_server import RedisServer
from tests.helpers.settings import KEYS
from tests.helpers.spool import spooled_rows
from tests.helpers.waiting import wait_for


def events(count: int, prefix: str = "v") -> list[GoalEvent]:
    return [
        new_event(
            {"visitor_id": f"{prefix}{i}", "name": "signup", "metadata": None, "description": None}
        )
        for i in range(count)
    ]


def ledger_ids(client: redis.Redis) -> list[str]:
    return [json.loads(str(raw))["i"] for raw in client.zrange(KEYS.ledger, 0, -1)]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def own_redis(redis_server: Callable[..., RedisServer]) -> RedisServer:
    """A redis-server of this test's own: tests elsewhere flush the shared one at any time."""
    return redis_server()


@pytest.fixture
def redis_client(own_redis: RedisServer) -> redis.Redis:
    return own_redis.client()


@pytest.fixture
def make_queue(own_redis: RedisServer) -> Iterator[Callable[..., GoalQueue]]:
    made: list[GoalQueue] = []

    def make(url: str | None = None, spool_dir: Path | None = None) -> GoalQueue:
        made.append(
            GoalQueue(
                settings=Settings(
                    broker_url=url or own_redis.url,
                    enqueue_timeout_seconds=0.3,
                    spool_dir=None if spool_dir is None else str(spool_dir),
                )
            )
        )
        return made[-1]

    yield make
    for queue in made:
        queue.close()


# ---------------------------------------------------------------------------------- storage


def test_an_empty_spool_has_nothing_pending_and_no_file(spool: Spool) -> None:
    assert spool.pending() == 0
    assert spool.oldest() is None
    assert spool.files() == []


def test_added_goals_wait_with_their_ids_and_exact_payloads(spool: Spool) -> None:
    before = time.time()
    batch = events(3)
    spool.add(batch)
    spool.add(events(1, "w"))
    assert spool.pending() == 4
    oldest = spool.oldest()
    assert oldest is not None and before <= oldest <= time.time()
    assert spooled_rows(spool.directory)[:3] == [(e.event_id, e.to_json()) for e in batch]


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_the_spool_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    # Given a process with a permissive umask, and a spool directory made world-readable before
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    previous = os.umask(umask)
    try:
        # When goals are spooled (visitor ids and metadata: personal data), and spooled again
        # while a reader keeps the WAL and its shared memory in place
        spool = Spool(directory)
        spool.add(events(3))
        (database,) = spool.files()
        reader = sqlite3.connect(database)
        reader.execute("SELECT count(*) FROM goals").fetchall()
        spool.add(events(3))
        with pytest.raises(EnqueueError):
            spool.flush(_Refusing())  # the flusher's lock file too
        files = sorted(directory.iterdir())
        modes = {path.name: oct(stat_mode(path)) for path in files}
        reader.close()
    finally:
        os.umask(previous)
    # Then only the owner can read the directory and each of its files, WAL and shm included
    assert oct(stat_mode(directory)) == oct(0o700)
    assert {path.suffix for path in files} >= {
        ".sqlite3",
        ".owner",
        ".lock",
        ".sqlite3-wal",
        ".sqlite3-shm",
    }
    assert modes == {path.name: oct(0o600) for path in files}


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


class _Refusing:
    """A queue Redis never confirms."""

    def enqueue_payloads(self, pairs: object) -> None:
        raise EnqueueError("Redis is down")


def test_the_spool_uses_wal_with_full_sync(spool: Spool) -> None:
    spool.add(events(1))
    (path,) = spool.files()
    with spool._connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.integration
def test_each_process_writes_its_own_file_and_any_process_reads_them_all(
    spool: Spool, tmp_path: Path
) -> None:
    # Given a goal spooled here and one spooled by another process
    spool.add(events(1))
    code = (
        "import sys; from goalqueue.goals import new_event; from goalqueue.spool import Spool;"
        "Spool(sys.argv[1]).add([new_event({'visitor_id': 'p', 'name': 'signup',"
        " 'metadata': None, 'description': None})])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(spool.directory)], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # Then there are two files, and this process sees both goals
    assert len(spool.files()) == 2
    assert spool.pending() == 2


@pytest.mark.integration
def test_a_forked_child_spools_into_a_file_of_its_own(spool: Spool) -> None:
    # Given a process that has spooled a goal, then forks (as a pre-forking web server does)
    spool.add(events(1))
    pid = os.fork()
    if pid == 0:  # the child: spool one goal through the inherited Spool, then leave at once
        try:
            spool.add(events(1, "child"))
        finally:
            os._exit(0 if spool.pending() == 2 else 1)
    # Then the child wrote a file of its own, and both goals wait
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(spool.files()) == 2
    assert spool.pending() == 2


def test_a_flushed_file_is_removed_once_its_owner_is_gone(
    spool: Spool, make_queue: Callable[..., GoalQueue]
) -> None:
    spool.add(events(2))
    queue = make_queue()
    # While its owner may still write, the emptied file stays
    assert spool.flush(queue) == 2
    assert len(spool.files()) == 1
    # Once the owner gives it up, the next flush removes it and everything beside it
    spool.close()
    assert spool.flush(queue) == 0
    assert spool.files() == []
    assert sorted(p.name for p in spool.directory.iterdir()) == ["flush.lock"]


# ---------------------------------------------------------------------------------- flushing


def test_flush_re_sends_oldest_first_in_batches_and_forgets_them(
    spool: Spool, make_queue: Callable[..., GoalQueue], redis_client: redis.Redis
) -> None:
    # Given five spooled goals
    batch = events(5)
    spool.add(batch)
    # When the spool is flushed two at a time
    sizes: list[int] = []
    assert spool.flush(make_queue(), batch=2, progress=sizes.append) == 5
    # Then Redis holds them in spool order, with their ids, and the spool is empty
    assert sizes == [2, 2, 1]
    assert ledger_ids(redis_client) == [e.event_id for e in batch]
    assert redis_client.llen(KEYS.queue) == 5
    assert spool.pending() == 0 and spool.oldest() is None


def test_flush_to_an_unreachable_redis_keeps_every_goal(
    spool: Spool, make_queue: Callable[..., GoalQueue]
) -> None:
    batch = events(3)
    spool.add(batch)
    with pytest.raises(EnqueueError, match="unreachable"):
        spool.flush(make_queue(dead_redis_url()))
    assert [eid for eid, _ in spooled_rows(spool.directory)] == [e.event_id for e in batch]


def test_an_unreadable_file_is_left_in_place_and_the_others_are_re_sent(
    spool: Spool, make_queue: Callable[..., GoalQueue], redis_client: redis.Redis
) -> None:
    # Given a spooled goal, and beside it a file that is not a database
    batch = events(2)
    spool.add(batch)
    broken = spool.directory / "goals-1-broken.sqlite3"
    broken.write_bytes(b"not a database" * 512)
    # When the spool is flushed, the error names the bad file
    with pytest.raises(sqlite3.DatabaseError, match="goals-1-broken"):
        spool.flush(make_queue())
    # Then the good goals were re-sent anyway, and the bad file is kept for a person to look at
    assert sorted(ledger_ids(redis_client)) == sorted(e.event_id for e in batch)
    assert broken.exists()


def test_concurrent_flushers_send_each_goal_once(
    spool: Spool, make_queue: Callable[..., GoalQueue], redis_client: redis.Redis
) -> None:
    # Given a thousand spooled goals
    batch = events(1000)
    spool.add(batch)
    # When three threads flush at once, fifty at a time
    queue = make_queue()
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda: counts.append(spool.flush(queue, batch=50)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then every goal was sent exactly once
    assert sum(counts) == 1000
    assert sorted(ledger_ids(redis_client)) == sorted(e.event_id for e in batch)
    assert redis_client.llen(KEYS.queue) == 1000


# ------------------------------------------------------------------------ many writers at once

WRITER_PROCESS = """
import sys
from goalqueue import GoalQueue
from goalqueue.config import Settings
queue = GoalQueue(settings=Settings(broker_url=sys.argv[1], enqueue_timeout_seconds=0.3,
                                    spool_dir=sys.argv[2]))
ids = [queue.track_goal(f"p{i}", "signup") for i in range(int(sys.argv[3]))]
print("\\n".join(ids))
"""
PER_WRITER = 150


def test_four_threads_and_two_processes_spooling_at_once_lose_nothing(
    make_queue: Callable[..., GoalQueue], tmp_path: Path
) -> None:
    # Given Redis down, two processes spooling goals as fast as they can
    directory, url = tmp_path / "spool", dead_redis_url()
    command = [sys.executable, "-c", WRITER_PROCESS, url, str(directory), str(PER_WRITER)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        # And, once they are writing, four threads of this process doing the same
        queue = make_queue(url, directory)
        wait_for(lambda: queue.backlog is not None and queue.backlog.spool.pending() > 0, 20)
        returned: list[str] = []
        start = threading.Barrier(4)

        def write(prefix: str) -> None:
            start.wait()
            returned.extend(queue.track_goal(f"{prefix}{i}", "signup") for i in range(PER_WRITER))

        threads = [threading.Thread(target=write, args=(f"t{n}-",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        outputs = [process.communicate(timeout=30)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
    # Then every id any writer got back is in the spool, once
    for output in outputs:
        returned += output.split()
    assert len(returned) == 6 * PER_WRITER
    spooled = [eid for eid, _ in spooled_rows(directory)]
    assert sorted(spooled) == sorted(returned)


# -------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(
    own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Result]]:
    """Runs ``goalqueue`` with the spool in tmp_path and the test Redis (or ``broker``)."""
    monkeypatch.setenv("GOALQUEUE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS", "0.3")

    def invoke(*args: str, broker: str = own_redis.url) -> Result:
        monkeypatch.setenv("GOALQUEUE_BROKER_URL", broker)
        get_settings.cache_clear()
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


def test_spool_status_reports_pending_goals_and_the_oldest_age(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    empty = cli("spool", "status", "--json")
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.output) == {
        "directory": str(tmp_path / "spool"),
        "pending": 0,
        "oldest_age_seconds": None,
    }
    Spool(tmp_path / "spool").add(events(3))
    figures = json.loads(cli("spool", "status", "--json").output)
    assert figures["pending"] == 3
    assert 0 <= figures["oldest_age_seconds"] < 60
    text = cli("spool", "status").output
    assert "pending  3" in text and str(tmp_path / "spool") in text


def test_spool_flush_re_sends_and_says_how_many(
    cli: Callable[..., Result], tmp_path: Path, redis_client: redis.Redis
) -> None:
    batch = events(1200)
    Spool(tmp_path / "spool").add(batch)
    result = cli("spool", "flush")
    assert result.exit_code == 0, result.output
    assert "re-sent 1200 spooled goal(s)" in result.output
    assert sorted(ledger_ids(redis_client)) == sorted(e.event_id for e in batch)
    assert json.loads(cli("spool", "status", "--json").output)["pending"] == 0


def test_spool_flush_fails_while_redis_is_unreachable(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    Spool(tmp_path / "spool").add(events(2))
    result = cli("spool", "flush", broker=dead_redis_url())
    assert result.exit_code == 1
    assert "re-sent 0 spooled goal(s)" in result.output
    assert "2 goal(s) still wait" in result.output and "unreachable" in result.output
    assert Spool(tmp_path / "spool").pending() == 2


def test_spool_commands_need_a_spool_dir(
    cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GOALQUEUE_SPOOL_DIR")
    assert cli("spool", "status").exit_code == 2
    given = cli("spool", "status", "--json", "--dir", str(tmp_path / "other"))
    assert given.exit_code == 0 and json.loads(given.output)["pending"] == 0
