"""The Flask example's own test, as an app's suite would write it: goalqueue's testing kit
records the goals instead of enqueueing them, so it needs no Redis and no worker.

pytest examples/test_flask_app.py
"""

from __future__ import annotations

from flask_app import app

from goalqueue.testing import GoalRecorder

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def test_a_signup_tracks_one_signup_goal(goalqueue_recorder: GoalRecorder) -> None:
    client = app.test_client()
    client.set_cookie("datafast_visitor_id", VISITOR)
    response = client.post("/signup", data={"email": "a@example.com", "plan": "pro"})
    assert response.status_code == 201
    goal = goalqueue_recorder.assert_tracked("signup", visitor_id=VISITOR, metadata={"plan": "pro"})
    assert response.json is not None and response.json["goal"] == goal.event_id


def test_a_refused_signup_tracks_nothing(goalqueue_recorder: GoalRecorder) -> None:
    client = app.test_client()
    client.set_cookie("datafast_visitor_id", VISITOR)
    assert client.post("/signup", data={"email": "a@example.com", "plan": "x"}).status_code == 400
    goalqueue_recorder.assert_not_tracked()
