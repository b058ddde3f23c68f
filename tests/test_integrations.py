"""Flask, Django and FastAPI integrations, driven through each framework's test client.

Every test enqueues on a real Redis (the tests' web database, flushed first) and reads the
ledger back. Each framework's tests skip when the framework is not installed (``pip install
'goalqueue[flask]'`` and so on), so the core suite runs without the extras.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
import redis

from goalqueue import EnqueueError, GoalQueue, InvalidGoal
from goalqueue.config import get_settings
from goalqueue.producer import set_default_queue
from tests.helpers.databases import WEB_REDIS_URL, flush

pytestmark = pytest.mark.integration

UNREACHABLE_URL = "redis://127.0.0.1:1/0"
VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"
LEDGER = "goalqueue:ledger"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def ledger() -> redis.Redis:
    flush(WEB_REDIS_URL)
    return redis.Redis.from_url(WEB_REDIS_URL, decode_responses=True)


@pytest.fixture
def queue(ledger: redis.Redis) -> GoalQueue:
    return GoalQueue(broker_url=WEB_REDIS_URL)


@pytest.fixture
def env_queue(monkeypatch: pytest.MonkeyPatch, ledger: redis.Redis) -> Iterator[None]:
    """Point the environment-configured default queue (the examples use it) at the web database."""
    monkeypatch.setenv("GOALQUEUE_BROKER_URL", WEB_REDIS_URL)
    get_settings.cache_clear()
    set_default_queue(None)
    yield
    get_settings.cache_clear()
    set_default_queue(None)


def goals(ledger: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in cast(list[str], ledger.zrange(LEDGER, 0, -1))]


def assert_one_signup(ledger: redis.Redis, event_id: str | None, plan: str = "pro") -> None:
    [goal] = goals(ledger)
    assert (goal["n"], goal["v"], goal["m"]) == ("signup", VISITOR, {"plan": plan})
    assert goal["i"] == event_id


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"goalqueue_example_{name}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --- Flask -------------------------------------------------------------------------------------


@pytest.fixture
def flask_client() -> Callable[[GoalQueue], Any]:
    flask = pytest.importorskip("flask")
    from goalqueue.integrations.flask import track_goal_from_request

    def make(queue: GoalQueue) -> Any:
        app = flask.Flask(__name__)
        app.config["TESTING"] = True

        @app.post("/signup")
        def signup() -> dict[str, Any]:
            goal = flask.request.args.get("goal", "signup")
            plan = flask.request.form["plan"]
            return {"goal": track_goal_from_request(goal, metadata={"plan": plan}, queue=queue)}

        return app.test_client()

    return make


def test_flask_tracks_the_cookie_visitor(flask_client: Any, queue: GoalQueue, ledger: Any) -> None:
    client = flask_client(queue)
    client.set_cookie("datafast_visitor_id", VISITOR)
    response = client.post("/signup", data={"plan": "pro"})
    assert response.status_code == 200
    assert_one_signup(ledger, response.json["goal"])


def test_flask_without_cookie_enqueues_nothing(
    flask_client: Any, queue: GoalQueue, ledger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="goalqueue.web"):
        response = flask_client(queue).post("/signup", data={"plan": "pro"})
    assert response.json == {"goal": None}
    assert goals(ledger) == []
    assert "no datafast_visitor_id cookie" in caplog.text


@pytest.mark.parametrize("cookie", [True, False])
def test_flask_invalid_goal_raises(
    flask_client: Any, queue: GoalQueue, ledger: Any, cookie: bool
) -> None:
    client = flask_client(queue)
    if cookie:
        client.set_cookie("datafast_visitor_id", VISITOR)
    with pytest.raises(InvalidGoal, match="reserved"):
        client.post("/signup?goal=identify", data={"plan": "pro"})
    assert goals(ledger) == []


def test_flask_unreachable_redis_raises(flask_client: Any) -> None:
    client = flask_client(GoalQueue(broker_url=UNREACHABLE_URL))
    client.set_cookie("datafast_visitor_id", VISITOR)
    with pytest.raises(EnqueueError):
        client.post("/signup", data={"plan": "pro"})


def test_flask_example(env_queue: None, ledger: Any) -> None:
    pytest.importorskip("flask")
    client = load_example("flask_app.py").app.test_client()
    client.set_cookie("datafast_visitor_id", VISITOR)
    response = client.post("/signup", data={"email": "a@example.com", "plan": "pro"})
    assert response.status_code == 201
    assert_one_signup(ledger, response.json["goal"])
    assert client.post("/signup", data={"email": "a@example.com", "plan": "x"}).status_code == 400


# --- Django ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_ready() -> None:
    """Configure Django once (unless something else already did): an in-memory SQLite DB."""
    pytest.importorskip("django")
    import django
    from django.apps import apps
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="goalqueue-tests",
            ALLOWED_HOSTS=["testserver"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            USE_TZ=True,
        )
    if not apps.ready:
        django.setup()


@pytest.fixture
def django_client(django_ready: None, ledger: redis.Redis) -> Iterator[Callable[[GoalQueue], Any]]:
    from django.db import IntegrityError, transaction
    from django.http import HttpRequest, JsonResponse
    from django.test import Client, override_settings
    from django.urls import path

    from goalqueue.integrations.django import track_goal_from_request

    overrides: list[Any] = []

    def make(queue: GoalQueue) -> Client:
        def track(request: HttpRequest) -> str | None:
            goal = request.GET.get("goal", "signup")
            plan = request.POST["plan"]
            return track_goal_from_request(request, goal, metadata={"plan": plan}, queue=queue)

        @transaction.atomic
        def signup(request: HttpRequest) -> JsonResponse:
            event_id = track(request)
            # What Redis holds while the transaction is still open.
            return JsonResponse({"goal": event_id, "before_commit": ledger.zcard(LEDGER)})

        def signup_fails(request: HttpRequest) -> JsonResponse:
            try:
                with transaction.atomic():
                    event_id = track(request)
                    raise IntegrityError("email already taken")
            except IntegrityError:
                return JsonResponse({"goal": event_id}, status=409)

        def autocommit(request: HttpRequest) -> JsonResponse:
            return JsonResponse({"goal": track(request)})

        urls = ModuleType("goalqueue_test_urls")
        urls.urlpatterns = [  # type: ignore[attr-defined]
            path("signup", signup),
            path("signup-fails", signup_fails),
            path("autocommit", autocommit),
        ]
        override = override_settings(ROOT_URLCONF=urls)
        override.enable()
        overrides.append(override)
        return Client()

    yield make
    for override in reversed(overrides):
        override.disable()


def test_django_enqueues_after_commit(django_client: Any, queue: GoalQueue, ledger: Any) -> None:
    client = django_client(queue)
    client.cookies["datafast_visitor_id"] = VISITOR
    response = client.post("/signup", {"plan": "pro"})
    assert response.status_code == 200
    assert response.json()["before_commit"] == 0
    assert_one_signup(ledger, response.json()["goal"])


def test_django_rollback_enqueues_nothing(
    django_client: Any, queue: GoalQueue, ledger: Any
) -> None:
    client = django_client(queue)
    client.cookies["datafast_visitor_id"] = VISITOR
    response = client.post("/signup-fails", {"plan": "pro"})
    assert response.status_code == 409
    assert response.json()["goal"] is not None  # an id was reserved, then dropped with the tx
    assert goals(ledger) == []


def test_django_outside_a_transaction_enqueues_at_once(
    django_client: Any, queue: GoalQueue, ledger: Any
) -> None:
    client = django_client(queue)
    client.cookies["datafast_visitor_id"] = VISITOR
    response = client.post("/autocommit", {"plan": "pro"})
    assert_one_signup(ledger, response.json()["goal"])


def test_django_testcase_recipe(django_client: Any, queue: GoalQueue, ledger: Any) -> None:
    """Inside django.test.TestCase's wrapping transaction nothing commits, so a project's own
    tests run the goal's on_commit callback with captureOnCommitCallbacks(execute=True)."""
    from django.db import transaction
    from django.test import TestCase

    client = django_client(queue)
    client.cookies["datafast_visitor_id"] = VISITOR
    with transaction.atomic():  # what TestCase wraps every test in
        with TestCase.captureOnCommitCallbacks(execute=True) as callbacks:
            response = client.post("/signup", {"plan": "pro"})
            assert goals(ledger) == []
        assert len(callbacks) == 1
        assert_one_signup(ledger, response.json()["goal"])
        transaction.set_rollback(True)


def test_django_without_cookie_schedules_nothing(
    django_client: Any, queue: GoalQueue, ledger: Any
) -> None:
    from django.test import TestCase

    client = django_client(queue)
    with TestCase.captureOnCommitCallbacks() as callbacks:
        response = client.post("/signup", {"plan": "pro"})
    assert response.json()["goal"] is None
    assert callbacks == []
    assert goals(ledger) == []


@pytest.mark.parametrize("cookie", [True, False])
def test_django_invalid_goal_raises_in_the_view(
    django_client: Any, queue: GoalQueue, ledger: Any, cookie: bool
) -> None:
    client = django_client(queue)
    if cookie:
        client.cookies["datafast_visitor_id"] = VISITOR
    with pytest.raises(InvalidGoal, match="metadata"):
        client.post("/signup", {"plan": "p" * 300})
    assert goals(ledger) == []


def test_django_enqueue_failure_after_commit_is_logged(
    django_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = django_client(GoalQueue(broker_url=UNREACHABLE_URL))
    client.cookies["datafast_visitor_id"] = VISITOR
    with caplog.at_level(logging.ERROR, logger="goalqueue.integrations.django"):
        response = client.post("/signup", {"plan": "pro"})
    assert response.status_code == 200  # the signup committed; the goal is logged, not raised
    event_id = response.json()["goal"]
    [record] = caplog.records
    assert "not kept after commit" in record.getMessage() and "unreachable" in record.getMessage()
    assert event_id in record.getMessage() and VISITOR in record.getMessage()


def test_django_example(django_ready: None, env_queue: None, ledger: Any) -> None:
    from django.test import Client, override_settings

    example = load_example("django_app.py")
    client = Client()
    client.cookies["datafast_visitor_id"] = VISITOR
    with override_settings(ROOT_URLCONF=example):
        response = client.post("/signup", {"email": "a@example.com", "plan": "pro"})
        assert response.status_code == 201
        assert_one_signup(ledger, response.json()["goal"])
        bad = client.post("/signup", {"email": "a@example.com", "plan": "x"})
        assert bad.status_code == 400


# --- FastAPI -----------------------------------------------------------------------------------


@pytest.fixture
def fastapi_client() -> Callable[[GoalQueue], Any]:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from goalqueue.integrations.fastapi import GoalTracker, goal_tracker_on

    def make(queue: GoalQueue) -> TestClient:
        app = FastAPI()
        tracker = goal_tracker_on(queue)

        @app.exception_handler(InvalidGoal)
        async def invalid_goal(request: Request, exc: InvalidGoal) -> JSONResponse:
            return JSONResponse({"errors": exc.errors}, status_code=400)

        @app.post("/signup")
        def signup(
            plan: str,
            goal: str = "signup",
            goals: GoalTracker = Depends(tracker),  # noqa: B008
        ) -> dict[str, Any]:
            return {"goal": goals.track(goal, metadata={"plan": plan})}

        @app.post("/signup-async")
        async def signup_async(
            plan: str,
            goal: str = "signup",
            goals: GoalTracker = Depends(tracker),  # noqa: B008
        ) -> dict[str, Any]:
            return {"goal": await goals.track_async(goal, metadata={"plan": plan})}

        return TestClient(app)

    return make


@pytest.mark.parametrize("route", ["/signup", "/signup-async"])
def test_fastapi_tracks_the_cookie_visitor(
    fastapi_client: Any, queue: GoalQueue, ledger: Any, route: str
) -> None:
    client = fastapi_client(queue)
    client.cookies.set("datafast_visitor_id", VISITOR)
    response = client.post(route, params={"plan": "pro"})
    assert response.status_code == 200
    assert_one_signup(ledger, response.json()["goal"])


@pytest.mark.parametrize("route", ["/signup", "/signup-async"])
def test_fastapi_without_cookie_enqueues_nothing(
    fastapi_client: Any, queue: GoalQueue, ledger: Any, route: str
) -> None:
    response = fastapi_client(queue).post(route, params={"plan": "pro"})
    assert response.json() == {"goal": None}
    assert goals(ledger) == []


@pytest.mark.parametrize("cookie", [True, False])
def test_fastapi_invalid_goal_is_a_400(
    fastapi_client: Any, queue: GoalQueue, ledger: Any, cookie: bool
) -> None:
    client = fastapi_client(queue)
    if cookie:
        client.cookies.set("datafast_visitor_id", VISITOR)
    response = client.post("/signup-async", params={"plan": "pro", "goal": "bad name!"})
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["name"]
    assert goals(ledger) == []


def test_fastapi_unreachable_redis_raises(fastapi_client: Any) -> None:
    client = fastapi_client(GoalQueue(broker_url=UNREACHABLE_URL))
    client.cookies.set("datafast_visitor_id", VISITOR)
    with pytest.raises(EnqueueError):
        client.post("/signup", params={"plan": "pro"})


def test_fastapi_example_with_overridden_dependency(queue: GoalQueue, ledger: Any) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from goalqueue.integrations.fastapi import goal_tracker, goal_tracker_on

    app = load_example("fastapi_app.py").app
    app.dependency_overrides[goal_tracker] = goal_tracker_on(queue)
    client = TestClient(app)
    client.cookies.set("datafast_visitor_id", VISITOR)
    response = client.post("/signup", json={"email": "a@example.com", "plan": "pro"})
    assert response.status_code == 201
    assert_one_signup(ledger, response.json()["goal"])
    bad = client.post("/signup", json={"email": "a@example.com", "plan": "x"})
    assert bad.status_code == 422


def test_fastapi_example_on_the_default_queue(env_queue: None, ledger: Any) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    client = TestClient(load_example("fastapi_app.py").app)
    client.cookies.set("datafast_visitor_id", VISITOR)
    response = client.post("/signup", json={"email": "a@example.com", "plan": "free"})
    assert_one_signup(ledger, response.json()["goal"], plan="free")
