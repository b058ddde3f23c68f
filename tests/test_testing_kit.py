"""goalqueue.testing: an app's tests see what it tracked, validated as in production, with no
Redis (these are unit tests: a connection would fail them) and no worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import goalqueue
from goalqueue import InvalidGoal
from goalqueue.producer import default_queue
from goalqueue.testing import GoalRecorder, RecordingQueue, recording

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
EVENT_ID = "9b6b8a4e-3f0e-4c52-9d55-6f0c1f2a7b10"


def test_every_producer_records_instead_of_enqueueing(goalqueue_recorder: GoalRecorder) -> None:
    # When the app tracks goals through the blocking, bulk and asyncio producers
    goalqueue.track_goal(VISITOR, "Sign Up", metadata={"seats": 3})
    goalqueue.track_goals([{"visitor_id": VISITOR, "name": "purchase"}])
    asyncio.run(goalqueue.atrack_goal(VISITOR, "upgrade", description="to pro"))
    # Then each is recorded as it would have been enqueued, normalised
    assert goalqueue_recorder.names == ["sign_up", "purchase", "upgrade"]
    goalqueue_recorder.assert_tracked("Sign Up", visitor_id=VISITOR, metadata={"seats": 3})
    goalqueue_recorder.assert_tracked("upgrade", description="to pro", times=1)


def test_a_bad_goal_raises_as_in_production(goalqueue_recorder: GoalRecorder) -> None:
    with pytest.raises(InvalidGoal, match="reserved"):
        goalqueue.track_goal(VISITOR, "identify")
    goalqueue_recorder.assert_not_tracked()


def test_an_event_id_is_recorded_once_as_redis_would_enqueue_it_once(
    goalqueue_recorder: GoalRecorder,
) -> None:
    for _ in range(3):
        goalqueue.track_goal(VISITOR, "purchase", event_id=EVENT_ID)
    assert [goal.event_id for goal in goalqueue_recorder.goals] == [EVENT_ID]


def test_an_assertion_about_a_goal_not_tracked_fails_and_says_what_was(
    goalqueue_recorder: GoalRecorder,
) -> None:
    goalqueue.track_goal(VISITOR, "signup", metadata={"plan": "free"})
    with pytest.raises(AssertionError, match=r"expected a goal 'purchase'.*tracked: signup"):
        goalqueue_recorder.assert_tracked("purchase")
    with pytest.raises(AssertionError, match="found 0"):
        goalqueue_recorder.assert_tracked("signup", metadata={"plan": "pro"})
    with pytest.raises(AssertionError, match="expected 2 goal"):
        goalqueue_recorder.assert_tracked("signup", times=2)
    with pytest.raises(AssertionError, match="expected no goal 'signup'"):
        goalqueue_recorder.assert_not_tracked("signup")


def test_a_flask_app_made_during_the_test_records_too() -> None:
    flask = pytest.importorskip("flask")
    from goalqueue.integrations import flask as goalqueue_flask

    with recording() as recorder:
        app = flask.Flask(__name__)
        goalqueue_flask.init_app(app)

        @app.post("/signup")
        def signup() -> dict[str, str | None]:
            return {"goal": goalqueue_flask.track_goal_from_request("signup")}

        client = app.test_client()
        client.set_cookie("datafast_visitor_id", VISITOR)
        goal = client.post("/signup").json["goal"]  # type: ignore[index]
    assert recorder.assert_tracked("signup", visitor_id=VISITOR).event_id == goal


def test_recording_ends_with_its_block() -> None:
    with recording() as recorder:
        goalqueue.track_goal(VISITOR, "signup")
    assert recorder.names == ["signup"]
    assert not isinstance(default_queue(), RecordingQueue)


@pytest.mark.integration  # runs pytest in a process of its own
def test_the_fixture_comes_with_the_installed_package(tmp_path: Path) -> None:
    # Given an app's test suite that knows nothing of goalqueue's tests
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            f"""
            import goalqueue

            def test_tracked(goalqueue_recorder):
                goalqueue.track_goal("{VISITOR}", "signup")
                goalqueue_recorder.assert_tracked("signup")

            def test_not_tracked(goalqueue_recorder):
                goalqueue_recorder.assert_tracked("signup")
            """
        )
    )
    # When it runs
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the fixture is there, and a goal the app did not track fails its test
    assert "1 failed, 1 passed" in done.stdout, done.stdout
    assert "expected a goal 'signup'" in done.stdout
