"""A Flask app: ``gunicorn tests.webapps.flask_site:app``."""

from __future__ import annotations

from flask import Flask

from goalqueue.integrations import flask as goalqueue_flask

app = Flask(__name__)
goalqueue_flask.init_app(app)


@app.post("/signup")
def signup() -> tuple[dict[str, str | None], int]:
    event_id = goalqueue_flask.track_goal_from_request("signup", metadata={"plan": "pro"})
    return {"goal": event_id}, 201
