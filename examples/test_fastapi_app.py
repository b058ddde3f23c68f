"""The FastAPI example's own test: the asyncio producer's goals recorded by goalqueue's testing
kit, through the app's lifespan, with no Redis.

pytest examples/test_fastapi_app.py
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from fastapi_app import app

from goalqueue.testing import GoalRecorder

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def test_a_signup_tracks_one_signup_goal(goalqueue_recorder: GoalRecorder) -> None:
    with TestClient(app) as client:
        client.cookies.set("datafast_visitor_id", VISITOR)
        response = client.post("/signup", json={"email": "a@example.com", "plan": "pro"})
    assert response.status_code == 201
    goal = goalqueue_recorder.assert_tracked("signup", visitor_id=VISITOR, metadata={"plan": "pro"})
    assert response.json()["goal"] == goal.event_id


def test_a_visitor_without_the_cookie_is_not_tracked(goalqueue_recorder: GoalRecorder) -> None:
    with TestClient(app) as client:
        response = client.post("/signup", json={"email": "a@example.com", "plan": "free"})
    assert response.status_code == 201 and response.json()["goal"] is None
    goalqueue_recorder.assert_not_tracked("signup")
