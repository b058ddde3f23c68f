"""The Django example's own test: a ``TestCase`` whose goals, enqueued on commit, are recorded
by goalqueue's testing kit (no Redis, no worker).

pytest examples/test_django_app.py
"""

from __future__ import annotations

import django_app  # noqa: F401 - configures Django and its URLs
from django.test import TestCase, override_settings

from goalqueue.testing import recording

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


@override_settings(ROOT_URLCONF="django_app")
class SignupTests(TestCase):
    def setUp(self) -> None:
        self.client.cookies["datafast_visitor_id"] = VISITOR

    def test_a_signup_tracks_one_signup_goal_once_it_commits(self) -> None:
        with recording() as goals, self.captureOnCommitCallbacks(execute=True):
            response = self.client.post("/signup", {"email": "a@example.com", "plan": "pro"})
        self.assertEqual(response.status_code, 201)
        goal = goals.assert_tracked("signup", visitor_id=VISITOR, metadata={"plan": "pro"})
        self.assertEqual(response.json()["goal"], goal.event_id)

    def test_a_refused_signup_tracks_nothing(self) -> None:
        with recording() as goals, self.captureOnCommitCallbacks(execute=True):
            response = self.client.post("/signup", {"email": "a@example.com", "plan": "x"})
        self.assertEqual(response.status_code, 400)
        goals.assert_not_tracked()
