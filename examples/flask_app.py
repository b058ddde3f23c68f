"""Flask: track a ``signup`` goal when a user signs up.

pip install 'goalqueue[flask]'
GOALQUEUE_BROKER_URL=redis://localhost:6379/0 flask --app examples/flask_app.py run
"""

from __future__ import annotations

import logging

from flask import Flask, abort, request

from goalqueue import EnqueueError
from goalqueue.integrations.flask import track_goal_from_request

PLANS = {"free", "pro"}

app = Flask(__name__)


def create_user(email: str, plan: str) -> dict[str, str]:
    """Stand-in for your user model."""
    return {"email": email, "plan": plan}


@app.post("/signup")
def signup() -> tuple[dict[str, object], int]:
    plan = request.form.get("plan", "free")
    if plan not in PLANS:
        abort(400)
    user = create_user(request.form["email"], plan)
    try:
        event_id = track_goal_from_request("signup", metadata={"plan": plan})
    except EnqueueError:  # Redis is down: analytics must not fail the signup
        logging.getLogger(__name__).exception("signup goal not tracked")
        event_id = None
    return {"user": user, "goal": event_id}, 201
