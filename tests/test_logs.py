"""``GOALQUEUE_LOG_FORMAT``: text or one JSON object per line, from a real worker (and a node)
delivering to the sandbox through a 401, a 400 and a transport error; the API key never shows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from goalqueue import GoalQueue
from goalqueue.cli import main
from goalqueue.config import Settings, get_settings
from goalqueue.errors import ConfigError
from goalqueue.logs import JsonFormatter
from goalqueue.sandbox import Sandbox
from tests.helpers.settings import KEYS
from tests.helpers.waiting import wait_for
from tests.helpers.workers import Workers, worker_env

SECRET = "df_SECRET-key-4f1d9a7c2e"
GOALQUEUE = Path(sys.executable).parent / "goalqueue"
OUTCOME_FIELDS = {"event_id", "outcome", "status", "attempt", "duration"}


def test_json_lines_carry_the_fields_passed_through_extra() -> None:
    record = logging.LogRecord("workers.delivery", logging.INFO, "", 0, "goal %s", ("e1",), None)
    record.__dict__.update(event_id="e1", outcome="waiting", status=None, attempt=2)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "goal e1" and line["level"] == "INFO"
    assert line["logger"] == "workers.delivery" and line["time"].endswith("Z")
    assert (line["event_id"], line["status"], line["attempt"]) == ("e1", None, 2)
    assert "duration" not in line


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_cli_logs_json_lines_when_told_to(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOALQUEUE_LOG_FORMAT", "json")
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", "redis://127.0.0.1:9/0")
    get_settings.cache_clear()
    try:
        CliRunner().invoke(main, ["pause", "--for", "soon"])  # usage error: no Redis
    finally:
        get_settings.cache_clear()
    (handler,) = root_logger.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert root_logger.level == logging.WARNING


@pytest.mark.integration  # starts goalqueue worker, which refuses to
def test_a_bad_log_format_is_one_line_at_start() -> None:
    with pytest.raises(ConfigError, match="GOALQUEUE_LOG_FORMAT must be text or json, got 'xml'"):
        Settings.from_env({"GOALQUEUE_LOG_FORMAT": "xml"})
    env = {**os.environ, "GOALQUEUE_LOG_FORMAT": "xml", "DATAFAST_API_KEY": "df_x"}
    result = subprocess.run(
        [str(GOALQUEUE), "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "goalqueue worker cannot start: GOALQUEUE_LOG_FORMAT must be text or json, got 'xml'"
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_api_key_never_shows_and_json_outcome_lines_carry_their_fields(
    log_format: str,
    queue: GoalQueue,
    sandbox: Sandbox,
    settings: Settings,
    tmp_path: Path,
    redis_client: redis.Redis,
) -> None:
    # Given a worker (a node, for json) with a recognisable key, the one the sandbox takes
    sandbox.set_key(SECRET)
    sandbox.add_bots("bot")
    env = {**worker_env(settings, sandbox.url, api_key=SECRET), "GOALQUEUE_LOG_FORMAT": log_format}
    pool = Workers(tmp_path, env)
    try:
        worker = pool.start_node(1) if log_format == "json" else pool.start()
        # When DataFast answers a 401 (a pause), then a 400, then not at all (a timeout)
        sandbox.fail_next(401)
        paused = queue.track_goal("v1", "signup")
        sandbox.wait_for_events(1, status=200, timeout=20)
        bot = queue.track_goal("bot", "signup")
        wait_for(lambda: redis_client.hlen(KEYS.dead) == 1, 10)
        sandbox.set_faults(hang=True)
        timed_out = queue.track_goal("v2", "signup")
        wait_for(lambda: f"goal {timed_out} waiting" in worker.output(), 10)
        sandbox.set_faults(hang=False)
        sandbox.wait_for_events(2, status=200, timeout=20)
    finally:
        pool.stop_all()
    output = worker.output()
    # Then the key is nowhere in the output
    assert SECRET not in output and SECRET[3:] not in output
    if log_format == "text":
        assert f"goal {bot} dead (bad_request): 400" in output
        assert f"goal {paused} waiting (auth): 401" in output
        return
    # And every json line parses, and each outcome line carries the goal's fields
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    outcomes = {line["event_id"]: line for line in lines if "event_id" in line}
    assert all(set(line) >= OUTCOME_FIELDS for line in outcomes.values())
    assert (outcomes[bot]["outcome"], outcomes[bot]["status"]) == ("dead", 400)
    assert (outcomes[paused]["outcome"], outcomes[paused]["status"]) == ("waiting", 401)
    assert outcomes[timed_out]["status"] is None and outcomes[timed_out]["duration"] >= 0.5
    assert any(line["message"].endswith(" ready.") for line in lines)
