"""The DataFast sandbox, exercised over real HTTP through uvicorn in a background thread."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from goalqueue.errors import InvalidGoal
from goalqueue.sandbox import DEFAULT_KEY, RateLimit, Sandbox, SandboxState, sandbox_command
from goalqueue.schema import validate_goal

AUTH = {"Authorization": f"Bearer {DEFAULT_KEY}"}
GOAL: dict[str, Any] = {"datafast_visitor_id": "visitor-1", "name": "signup"}


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(shared_sandbox: Sandbox) -> Sandbox:
    """The module's sandbox, back to its defaults before each test."""
    shared_sandbox.reset()
    state = shared_sandbox.state
    state.key, state.visitor_mode = DEFAULT_KEY, "any"
    state.visitors.clear()
    state.bots.clear()
    return shared_sandbox


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url, timeout=5.0) as http:
        yield http


def post_goal(
    client: httpx.Client, body: Any = None, headers: dict[str, str] | None = None, **params: str
) -> httpx.Response:
    return client.post(
        "/api/v1/goals", json=GOAL if body is None else body, headers=headers or AUTH, params=params
    )


def assert_error(response: httpx.Response, status: int, message_part: str = "") -> None:
    assert response.status_code == status
    payload = response.json()
    assert payload["status"] == "error"
    assert payload["error"]["code"] == status
    assert message_part.lower() in payload["error"]["message"].lower()


def test_accepts_a_goal_with_datafasts_success_shape(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    body = {**GOAL, "name": "Trial Started", "metadata": {"plan": "pro"}, "description": "d"}
    response = post_goal(client, body, {**AUTH, "Idempotency-Key": "evt-1"})

    assert response.status_code == 200
    payload = response.json()
    assert payload["status"] == "success"
    [item] = payload["data"]
    assert item["message"] == "Custom event created successfully"
    assert re.fullmatch(r"[0-9a-f]{24}", item["eventId"])
    [event] = sandbox.events()
    assert (event.status, event.body, event.idempotency_key) == (200, body, "evt-1")
    assert event.event_id == item["eventId"]


def test_visitor_id_alias_is_accepted(client: httpx.Client) -> None:
    assert post_goal(client, {"visitorId": "v", "name": "signup"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {DEFAULT_KEY}"}],
    ids=["missing", "wrong-key", "wrong-scheme"],
)
def test_refuses_a_bad_key_with_401(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.post("/api/v1/goals", json=GOAL, headers=headers)
    assert_error(response, 401, "api key")


@pytest.mark.parametrize(
    ("body", "message_part"),
    [
        ({"name": "signup"}, "datafast_visitor_id"),
        ({**GOAL, "datafast_visitor_id": ""}, "datafast_visitor_id"),
        ({"datafast_visitor_id": "v"}, "name"),
        ({**GOAL, "name": "sign/up"}, "name"),
        ({**GOAL, "name": "x" * 65}, "name"),
        ({**GOAL, "name": "Identify"}, "reserved"),
        ({**GOAL, "metadata": {f"k{i}": "v" for i in range(11)}}, "10 keys"),
        ({**GOAL, "metadata": {"Bad Key": "v"}}, "metadata key"),
        ({**GOAL, "metadata": {"plan": 3}}, "metadata value"),
        ({**GOAL, "metadata": {"plan": "x" * 256}}, "metadata value"),
        ({**GOAL, "metadata": ["plan"]}, "metadata"),
        ({**GOAL, "description": 7}, "description"),
        (["not", "an", "object"], "object"),
    ],
)
def test_refuses_invalid_goals_with_400(client: httpx.Client, body: Any, message_part: str) -> None:
    assert_error(post_goal(client, body), 400, message_part)


# Goals in the form the producer sends them: metadata values are already strings.
SCHEMA_TABLE: list[tuple[str, str, Any, Any]] = [
    ("visitor-1", "signup", None, None),
    ("", "signup", None, None),
    ("a visitor", "signup", None, None),
    ("a\tvisitor", "signup", None, None),
    ("visitor\n", "signup", None, None),
    ("\u00a0visitor", "signup", None, None),
    ("vis\x00itor", "signup", None, None),
    ("visitor\x7f", "signup", None, None),
    ("visitor\x85", "signup", None, None),
    ("visitor\ud800", "signup", None, None),
    ("visiteur-\u00e9", "signup", None, None),
    ("v" * 128, "signup", None, None),
    ("v" * 129, "signup", None, None),
    ("visitor-1", "", None, None),
    ("visitor-1", "Sign Up", None, None),
    ("visitor-1", "plan:upgraded-to_pro", None, None),
    ("visitor-1", "n" * 64, None, None),
    ("visitor-1", "n" * 65, None, None),
    ("visitor-1", "sign/up", None, None),
    ("visitor-1", "IDENTIFY", None, None),
    ("visitor-1", "signup", {}, None),
    ("visitor-1", "signup", {"plan": ""}, None),
    ("visitor-1", "signup", {"plan": "x" * 255}, None),
    ("visitor-1", "signup", {"plan": "x" * 256}, None),
    ("visitor-1", "signup", {"plan": "pro\udfff"}, None),
    ("visitor-1", "signup", {f"k{i}": "v" for i in range(10)}, None),
    ("visitor-1", "signup", {f"k{i}": "v" for i in range(11)}, None),
    ("visitor-1", "signup", {"k" * 64: "v"}, None),
    ("visitor-1", "signup", {"k" * 65: "v"}, None),
    ("visitor-1", "signup", {"Plan": "v"}, None),
    ("visitor-1", "signup", ["plan"], None),
    ("visitor-1", "signup", None, ""),
    ("visitor-1", "signup", None, "d" * 1024),
    ("visitor-1", "signup", None, "d" * 1025),
    ("visitor-1", "signup", None, "lone \ud800 surrogate"),
    ("visitor-1", "signup", None, 7),
]


def schema_refuses(visitor: str, name: str, metadata: Any, description: Any) -> bool:
    try:
        validate_goal(visitor, name, metadata, description)
    except InvalidGoal:
        return True
    return False


@pytest.mark.parametrize(("visitor", "name", "metadata", "description"), SCHEMA_TABLE)
def test_sandbox_refuses_with_400_exactly_what_the_schema_refuses(
    client: httpx.Client, visitor: str, name: str, metadata: Any, description: Any
) -> None:
    # Given a goal as the producer would send it (escaped JSON carries lone surrogates)
    goal = {"datafast_visitor_id": visitor, "name": name}
    goal |= {"metadata": metadata, "description": description}
    # When it reaches the sandbox
    response = client.post("/api/v1/goals", content=json.dumps(goal).encode(), headers=AUTH)
    # Then the sandbox refuses it with 400 if and only if goalqueue.schema refuses it
    expected = 400 if schema_refuses(visitor, name, metadata, description) else 200
    assert response.status_code == expected, response.text


def test_normalises_names_before_checking_them(client: httpx.Client) -> None:
    assert post_goal(client, {**GOAL, "name": "Plan Upgraded:Pro"}).status_code == 200


def test_refuses_malformed_json_with_400(sandbox: Sandbox, client: httpx.Client) -> None:
    response = client.post("/api/v1/goals", content=b"{nope", headers=AUTH)
    assert_error(response, 400, "json")
    assert sandbox.events()[0].body == "{nope"


def test_refuses_bots_with_400(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.add_bots("visitor-1")
    assert_error(post_goal(client), 400, "bot")


def test_registered_mode_refuses_visitors_without_pageviews(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    response = client.post("/_sandbox/visitors", json={"visitors": ["known"], "mode": "registered"})
    assert response.json() == {"mode": "registered", "visitors": 1}

    assert_error(post_goal(client), 404, "pageviews")
    assert post_goal(client, {**GOAL, "datafast_visitor_id": "known"}).status_code == 200


def test_account_tokens_need_a_website_id(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_key("dft_account")
    headers = {"Authorization": "Bearer dft_account"}

    assert_error(post_goal(client, headers=headers), 400, "websiteId")
    assert post_goal(client, headers=headers, websiteId="site-1").status_code == 200
    assert sandbox.events(200)[0].website_id == "site-1"


def test_key_can_change_at_run_time(sandbox: Sandbox, client: httpx.Client) -> None:
    assert client.post("/_sandbox/key", json={"key": "df_rotated"}).status_code == 200
    assert_error(post_goal(client), 401)

    sandbox.set_key(DEFAULT_KEY)
    assert post_goal(client).status_code == 200


def test_fail_next_503_then_recovers(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.fail_next(503, count=2)

    statuses = [post_goal(client).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert [e.status for e in sandbox.events()] == [503, 503, 200]


def test_fail_next_429_carries_retry_after_set_over_http(client: httpx.Client) -> None:
    fault = {"fail_next": {"status": 429, "count": 1, "retry_after": 2}}
    faults = client.post("/_sandbox/faults", json=fault).json()["faults"]
    assert faults["fail_next"] == {"status": 429, "count": 1, "retry_after": 2}

    response = post_goal(client)

    assert_error(response, 429)
    assert response.headers["Retry-After"] == "2"
    assert client.get("/_sandbox/faults").json()["faults"]["fail_next"] is None


def test_fail_next_429_without_retry_after_sends_no_header(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.fail_next(429)
    response = post_goal(client)
    assert_error(response, 429)
    assert "Retry-After" not in response.headers


def test_rate_limit_lasts_until_cleared(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults(rate_limit={"retry_after": 1})
    for _ in range(2):
        response = post_goal(client)
        assert_error(response, 429)
        assert response.headers["Retry-After"] == "1"

    assert client.delete("/_sandbox/faults").status_code == 200
    assert post_goal(client).status_code == 200


@pytest.mark.parametrize(
    ("fault", "shown", "header"),
    [
        ({"retry_after": 3}, 3, "3"),
        (2, 2, "2"),
        (
            "Wed, 21 Oct 2037 07:28:00 GMT",
            "Wed, 21 Oct 2037 07:28:00 GMT",
            "Wed, 21 Oct 2037 07:28:00 GMT",
        ),
        (True, 1, "1"),
    ],
    ids=["retry-after-object", "bare-seconds", "bare-http-date", "true"],
)
def test_rate_limit_without_per_second_refuses_every_request(
    client: httpx.Client, fault: Any, shown: int | str, header: str
) -> None:
    # Given a rate limit set over HTTP in one of its every-request forms
    faults = client.post("/_sandbox/faults", json={"rate_limit": fault}).json()["faults"]
    assert faults["rate_limit"] == {"retry_after": shown}
    # Then every goal request gets 429 with that Retry-After, until it is turned off
    for _ in range(5):
        response = post_goal(client)
        assert_error(response, 429)
        assert response.headers["Retry-After"] == header
    client.post("/_sandbox/faults", json={"rate_limit": None})
    assert post_goal(client).status_code == 200


def test_rate_limit_per_second_refuses_exactly_the_excess_of_a_burst(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    # Given a limit of 2 goals a second (a bucket refilled every half second)
    faults = sandbox.set_faults(rate_limit={"per_second": 2, "retry_after": 1}).to_dict()
    assert faults["rate_limit"] == {"per_second": 2, "retry_after": 1}
    # When a burst of 6 arrives, well within a refill
    statuses = [post_goal(client).status_code for _ in range(6)]
    # Then the first 2 pass and exactly the 4 over the limit get 429 with Retry-After
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert len(sandbox.events(429)) == 4
    response = post_goal(client)
    assert_error(response, 429)
    assert response.headers["Retry-After"] == "1"
    # And once the bucket has refilled, requests pass again
    deadline = time.monotonic() + 5
    while (status := post_goal(client).status_code) == 429:
        assert time.monotonic() < deadline, "the rate limit never let a request through again"
        time.sleep(0.05)
    assert status == 200


def test_rate_limit_per_second_is_set_over_http_and_kept_across_other_changes(
    client: httpx.Client,
) -> None:
    fault = {"rate_limit": {"per_second": 1, "retry_after": 5}}
    assert client.post("/_sandbox/faults", json=fault).status_code == 200
    assert post_goal(client).status_code == 200
    # Another fault changes; the bucket, now empty, stays as it is
    client.post("/_sandbox/faults", json={"latency_ms": 1})
    response = post_goal(client)
    assert_error(response, 429)
    assert response.headers["Retry-After"] == "5"
    assert client.get("/_sandbox/faults").json()["faults"]["rate_limit"] == {
        "per_second": 1.0,
        "retry_after": 5,
    }


@pytest.mark.parametrize(
    "fault",
    [{"per_second": 0}, {"per_second": -1}, {"per_second": "fast"}, {"per_sec": 200}],
)
def test_admin_refuses_bad_rate_limits(client: httpx.Client, fault: dict[str, Any]) -> None:
    assert_error(client.post("/_sandbox/faults", json={"rate_limit": fault}), 400, "rate_limit")


def test_rate_limit_bucket_holds_one_seconds_worth_and_refills_continuously() -> None:
    now = [100.0]
    bucket = RateLimit(per_second=4, clock=lambda: now[0])
    assert [bucket.allows() for _ in range(5)] == [True] * 4 + [False]
    now[0] += 0.25  # a quarter of a second: one request's worth
    assert [bucket.allows(), bucket.allows()] == [True, False]
    now[0] += 60  # a long pause fills the bucket to one second's worth, no more
    assert sum(bucket.allows() for _ in range(10)) == 4
    slow = RateLimit(per_second=0.5, clock=lambda: now[0])
    assert [slow.allows(), slow.allows()] == [True, False]  # holds at least one request
    now[0] += 2
    assert slow.allows()


def test_suspended_website_gets_403(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults(suspended=True)
    assert_error(post_goal(client), 403, "tracking suspended")
    sandbox.clear_faults()
    assert post_goal(client).status_code == 200


def test_error_rate_one_always_answers_503(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults(error_rate=1.0)
    assert_error(post_goal(client), 503)


def test_latency_delays_answers(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults(latency_ms=100)
    started = time.monotonic()
    assert post_goal(client).status_code == 200
    assert time.monotonic() - started >= 0.1


def test_hang_trips_client_timeouts_and_is_released_when_cleared(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults(hang=True)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/api/v1/goals", json=GOAL, headers=AUTH, timeout=0.3)

    sandbox.clear_faults()

    # The abandoned request completes server-side: a lost response, as in production.
    [event] = sandbox.wait_for_events(1)
    assert event.status == 200


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.005)


def post_in_background(
    pool: ThreadPoolExecutor, sandbox: Sandbox, headers: dict[str, str]
) -> Future[httpx.Response]:
    return pool.submit(httpx.post, sandbox.url, json=GOAL, headers=headers, timeout=10.0)


def test_in_flight_counts_held_requests_until_they_are_answered(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    # Given answers held back by latency
    sandbox.set_faults(latency_ms=1000)
    # When three goals arrive at once
    with ThreadPoolExecutor(3) as pool:
        answers = [post_in_background(pool, sandbox, AUTH) for _ in range(3)]
        # Then all three are in flight, in the state and over HTTP, and none is recorded yet
        wait_until(lambda: sandbox.stats().in_flight == 3)
        assert client.get("/_sandbox/stats").json()["in_flight"] == 3
        assert sandbox.events() == []
        assert [answer.result().status_code for answer in answers] == [200] * 3
    # And once answered, none is
    assert sandbox.stats().in_flight == sandbox.state.in_flight == 0
    assert client.get("/_sandbox/stats").json()["in_flight"] == 0


def test_in_flight_counts_hung_requests_and_refusals_until_the_hang_is_released(
    sandbox: Sandbox,
) -> None:
    # Given hanging requests, one of them with a wrong key
    sandbox.set_faults(hang=True)
    with ThreadPoolExecutor(3) as pool:
        answers = [post_in_background(pool, sandbox, AUTH) for _ in range(2)]
        answers.append(post_in_background(pool, sandbox, {"Authorization": "Bearer wrong"}))
        wait_until(lambda: sandbox.state.in_flight == 3)
        # When the hang is released
        sandbox.clear_faults()
        statuses = sorted(answer.result().status_code for answer in answers)
    # Then every one is answered, the refusal too, and nothing is left in flight
    assert statuses == [200, 200, 401]
    assert sandbox.state.in_flight == 0


@pytest.mark.parametrize(
    "fault",
    [
        {"nope": 1},
        {"error_rate": 2},
        {"fail_next": {"status": 200}},
        {"hang": "yes"},
        {"odd_answer": "xml"},
        {"odd_answer": ["html"]},
    ],
)
def test_admin_refuses_bad_faults(client: httpx.Client, fault: dict[str, Any]) -> None:
    assert_error(client.post("/_sandbox/faults", json=fault), 400)


def test_admin_events_filter_and_duplicate_stats(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.fail_next(503)
    for key in ["a", "a", "b", "a"]:  # the 503 eats the first "a"
        post_goal(client, headers={**AUTH, "Idempotency-Key": key})
    post_goal(client)  # accepted without a key

    events = client.get("/_sandbox/events", params={"status": 200}).json()["events"]
    assert [e["idempotency_key"] for e in events] == ["a", "b", "a", None]
    assert len(client.get("/_sandbox/events").json()["events"]) == 5
    assert client.get("/_sandbox/stats").json() == {
        "total": 5,
        "by_status": {"200": 4, "503": 1},
        "accepted": 4,
        "distinct_keys": 2,
        "duplicates": 1,
        "accepted_without_key": 1,
        "in_flight": 0,
    }


@pytest.mark.parametrize(
    ("kind", "status", "content_type", "taken"),
    [
        ("html", 200, "text/html", False),
        ("no_content", 204, None, False),
        ("redirect", 301, None, False),
        ("truncated", 200, "application/json", True),
    ],
)
def test_odd_answers_are_not_datafasts_and_only_a_truncated_one_took_the_goal(
    sandbox: Sandbox,
    client: httpx.Client,
    kind: str,
    status: int,
    content_type: str | None,
    taken: bool,
) -> None:
    # Given the odd_answer fault, set over HTTP
    faults = client.post("/_sandbox/faults", json={"odd_answer": kind}).json()["faults"]
    assert faults["odd_answer"] == kind
    # When a goal is posted
    response = post_goal(client, headers={**AUTH, "Idempotency-Key": "k1"})
    # Then the answer is not DataFast's success body
    assert response.status_code == status
    if content_type is not None:
        assert response.headers["content-type"].startswith(content_type)
    with pytest.raises(ValueError):
        response.json()
    if status == 301:
        assert response.headers["location"].startswith("https://")
    # And the goal was taken only when DataFast answered (its answer cut short)
    [event] = sandbox.events()
    assert event.status == status
    assert (event.event_id is not None) is taken
    assert sandbox.stats().accepted == sandbox.stats().distinct_keys == int(taken)
    if taken:
        assert response.content.startswith(b'{"status":"success"')


def test_odd_answers_come_after_the_latency_and_are_cleared_like_other_faults(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults(odd_answer="html", latency_ms=100)
    started = time.monotonic()
    assert post_goal(client).headers["content-type"].startswith("text/html")
    assert time.monotonic() - started >= 0.1
    sandbox.clear_faults()
    assert post_goal(client).json()["status"] == "success"


def test_admin_reset_forgets_events_and_faults(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults(suspended=True)
    post_goal(client)

    assert client.post("/_sandbox/reset").status_code == 200

    assert sandbox.events() == []
    assert post_goal(client).status_code == 200


def test_unknown_paths_and_wrong_methods(client: httpx.Client) -> None:
    assert_error(client.get("/nowhere"), 404)
    assert_error(client.get("/_sandbox/nowhere"), 404)
    response = client.get("/api/v1/goals")
    assert_error(response, 405)
    assert response.headers["Allow"] == "POST"
    assert_error(client.post("/_sandbox/stats"), 405)


@pytest.mark.integration
def test_sandbox_picks_a_free_port_and_stops_cleanly() -> None:
    with Sandbox(SandboxState(key="df_other")) as sandbox:
        assert sandbox.url == f"{sandbox.base_url}/api/v1/goals"
        assert sandbox.port > 0
        response = httpx.post(sandbox.url, json=GOAL, headers={"Authorization": "Bearer df_other"})
        assert response.status_code == 200
    with pytest.raises(RuntimeError):
        _ = sandbox.url


def test_cli_help_lists_the_options() -> None:
    result = CliRunner().invoke(sandbox_command, ["--help"])
    assert result.exit_code == 0
    for option in ["--host", "--port", "--key", "--latency-ms", "--error-rate", "--rate-limit"]:
        assert option in result.output
    for option in ["--registered-only", "--bot", "--visitor", "--odd-answer"]:
        assert option in result.output
    assert "html|no_content|redirect|truncated" in result.output


@pytest.mark.integration
def test_cli_rate_limit_lets_that_many_goals_through_a_second() -> None:
    # Given `goalqueue sandbox --rate-limit 2` on a free port
    command = [str(Path(sys.executable).with_name("goalqueue")), "sandbox", "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*command, "--rate-limit", "2"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert process.stdout is not None
        found = re.search(r"listening on (\S+)", process.stdout.readline())
        assert found is not None
        # When a burst of 3 goals arrives
        statuses = [httpx.post(found[1], json=GOAL, headers=AUTH).status_code for _ in range(3)]
    finally:
        process.terminate()
        process.wait(timeout=10)
    # Then 2 pass and the third is rate limited
    assert statuses == [200, 200, 429]
