"""Flask: track a ``signup`` goal when a user signs up.

pip install 'goalqueue[flask]'
GOALQUEUE_BROKER_URL=redis://localhost:6379/0 GOALQUEUE_SPOOL_DIR=/var/spool/goalqueue \
    flask --app examples/flask_app.py run
"""

from __future__ import annotations

from flask import Flask, abort, request

from goalqueue.integrations import flask as goalqueue_flask

PLANS = {"free", "pro"}

app = Flask(__name__)
goalqueue_flask.init_app(app)  # a bad GOALQUEUE_* setting stops the app here, in one line


def create_user(email: str, plan: str) -> dict[str, str]:
    """Stand-in for your user model."""
    return {"email": email, "plan": plan}


@app.post("/signup")
def signup() -> tuple[dict[str, object], int]:
    plan = request.form.get("plan", "free")
    if plan not in PLANS:
        abort(400)
    user = create_user(request.form["email"], plan)
    # With GOALQUEUE_SPOOL_DIR set, a Redis outage spools the goal instead of failing the signup.
    event_id = goalqueue_flask.track_goal_from_request("signup", metadata={"plan": plan})
    return {"user": user, "goal": event_id}, 201
