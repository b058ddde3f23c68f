"""Table tests for the outcome policy: what one answer from DataFast means for a goal.

Every row is a real ``httpx.Response`` (or the :class:`Failure` the client makes of a request
that got no answer) as the client would see it, and the verdict the worker must act on.
"""

from __future__ import annotations

from dataclasses import replace
from email.utils import formatdate

import httpx
import pytest

from goalqueue.event import GoalEvent
from workers.policy import (
    ERROR_LIMIT,
    Failed,
    Failure,
    Outcome,
    Verdict,
    backoff,
    classify,
    give_up_reason,
    pause_length,
    retry_after,
)

NOW = 1_750_000_000.0
MAX_WAIT = 60.0
EVENT_ID = "65f1c0ffee0ddba11deadbee"


def classified(result: httpx.Response | Failure) -> Verdict:
    return classify(result, now=NOW, max_wait=MAX_WAIT)


def datafast_error(status: int, message: str, **headers: str) -> httpx.Response:
    """A response carrying DataFast's documented error body."""
    body = {"status": "error", "error": {"code": status, "message": message}}
    return httpx.Response(status, headers=headers, json=body)


def http_date(at: float) -> str:
    """``at`` as an HTTP-date (IMF-fixdate), the other form Retry-After may take."""
    return formatdate(at, usegmt=True)


# ------------------------------------------------------------------------------------ delivered


def success(data: object, status: int = 200) -> httpx.Response:
    """DataFast's success body around ``data``."""
    return httpx.Response(status, json={"status": "success", "data": data})


@pytest.mark.parametrize(
    ("response", "remote_id"),
    [
        pytest.param(success([{"message": "ok", "eventId": EVENT_ID}]), EVENT_ID, id="data-list"),
        pytest.param(success([{"eventId": EVENT_ID}], 201), EVENT_ID, id="201-data-list"),
        pytest.param(success({"eventId": EVENT_ID}), EVENT_ID, id="data-object"),
        pytest.param(success([{"eventId": 12345}]), "12345", id="int-id"),
        pytest.param(success([]), None, id="empty-list"),
        pytest.param(success([{"message": "ok"}]), None, id="no-id"),
        pytest.param(success("ok"), None, id="data-string"),
        pytest.param(success(None), None, id="data-null"),
    ],
)
def test_datafasts_success_body_is_delivered_and_the_remote_id_is_read_defensively(
    response: httpx.Response, remote_id: str | None
) -> None:
    # Given DataFast's success body, its data in any of the shapes seen
    # When it is classified
    verdict = classified(response)
    # Then the goal is delivered, with DataFast's event id when the body carries one
    expected = Verdict(Outcome.DELIVERED, response.status_code, remote_id=remote_id, answer="2xx")
    assert verdict == expected


@pytest.mark.parametrize(
    ("response", "body_start"),
    [
        pytest.param(
            httpx.Response(200, text="<html><title>Portal</title></html>"), "<html>", id="html"
        ),
        pytest.param(
            httpx.Response(200, content=b'{"status":"success","da'),
            '{"status":"success","da',
            id="truncated-json",
        ),
        pytest.param(httpx.Response(204), "an empty body", id="204"),
        pytest.param(httpx.Response(200), "an empty body", id="empty-body"),
        pytest.param(
            httpx.Response(200, json={"data": [{"eventId": EVENT_ID}]}), '{"data"', id="no-status"
        ),
        pytest.param(httpx.Response(200, json={"status": "success"}), '{"status"', id="no-data"),
        pytest.param(
            httpx.Response(200, json={"status": "error", "error": {"message": "x"}}),
            '{"status":"error"',
            id="error-body",
        ),
        pytest.param(httpx.Response(200, json=[{"eventId": EVENT_ID}]), "[{", id="body-list"),
        pytest.param(httpx.Response(200, json="success"), '"success"', id="body-string"),
        pytest.param(httpx.Response(202, content=b"\xff\xfe\x00garbage"), "garbage", id="bytes"),
        pytest.param(httpx.Response(200, json=[[[]]] * 1), "[[[]]]", id="nested"),
    ],
)
def test_any_other_2xx_is_not_delivered_but_an_unknown_outcome(
    response: httpx.Response, body_start: str
) -> None:
    # Given a 2xx that is not DataFast's success body (a proxy, a portal, a cut answer)
    # When it is classified
    verdict = classified(response)
    # Then the goal is not delivered: its outcome is unknown, it is retried (a bounded number
    # of times), and the error keeps what the body began with
    assert verdict.outcome is Outcome.TRANSIENT
    assert verdict.reason == "unexpected_response"
    assert verdict.unknown is True
    assert verdict.answer == "unexpected_2xx"
    assert verdict.status_code == response.status_code
    assert verdict.remote_id is None
    assert verdict.error is not None and body_start in verdict.error


def test_the_start_of_a_long_unexpected_body_is_kept_within_the_limit() -> None:
    verdict = classified(httpx.Response(200, text="<p>" + "x" * 5000))
    assert verdict.error is not None
    assert "<p>xxx" in verdict.error and len(verdict.error) <= ERROR_LIMIT


# --------------------------------------------------------------------- permanent and deferred


@pytest.mark.parametrize(
    ("status", "outcome", "reason"),
    [
        (400, Outcome.PERMANENT, "bad_request"),
        (404, Outcome.PERMANENT, "unknown_visitor"),
        (409, Outcome.PERMANENT, "client_error"),
        (410, Outcome.PERMANENT, "client_error"),
        (413, Outcome.PERMANENT, "client_error"),
        (422, Outcome.PERMANENT, "client_error"),
        (401, Outcome.DEFERRED, "auth"),
        (403, Outcome.DEFERRED, "suspended"),
        (429, Outcome.DEFERRED, "rate_limited"),
    ],
)
def test_4xx_outcomes_and_reasons(status: int, outcome: Outcome, reason: str) -> None:
    # Given DataFast's documented error body
    response = datafast_error(status, f"refused with {status}")
    # When it is classified
    verdict = classified(response)
    # Then the outcome and reason follow the table, and the message is DataFast's own
    assert verdict.outcome is outcome
    assert verdict.status_code == status
    assert verdict.reason == reason
    assert verdict.error == f"refused with {status}"
    assert verdict.remote_id is None
    assert verdict.retry_after is None
    assert verdict.answer == "4xx"
    assert verdict.unknown is False


@pytest.mark.parametrize("status", [300, 301, 302, 303, 307, 308])
def test_a_redirect_pauses_everyone_as_a_configuration_error(status: int) -> None:
    # Given DATAFAST_API_URL answering with a redirect (never followed)
    location = "https://datafa.st/api/v1/goals"
    response = httpx.Response(status, headers={"Location": location})
    # When it is classified
    verdict = classified(response)
    # Then delivery pauses for everyone, the error naming where it pointed
    assert verdict == Verdict(
        Outcome.DEFERRED, status, f"redirect to {location!r}", "redirect", answer="3xx"
    )
    assert not verdict.slows_down


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_is_transient(status: int) -> None:
    verdict = classified(datafast_error(status, "upstream trouble"))
    expected = Verdict(Outcome.TRANSIENT, status, "upstream trouble", "server_error", answer="5xx")
    assert verdict == expected


# ----------------------------------------------------------------------- requests unanswered


@pytest.mark.parametrize(
    ("failed", "outcome", "reason", "unknown"),
    [
        (Failed.REFUSED, Outcome.TRANSIENT, "connection_refused", False),
        (Failed.RESET, Outcome.TRANSIENT, "connection_reset", False),
        (Failed.TIMEOUT_BEFORE_SEND, Outcome.TRANSIENT, "timeout_before_send", False),
        (Failed.OTHER, Outcome.TRANSIENT, "connection_error", False),
        (Failed.TLS, Outcome.DEFERRED, "tls", False),
        (Failed.TIMEOUT_AFTER_SEND, Outcome.DEFERRED, "slow", True),
    ],
    ids=lambda value: str(value),
)
def test_each_kind_of_unanswered_request_has_its_outcome_and_reason(
    failed: Failed, outcome: Outcome, reason: str, unknown: bool
) -> None:
    # Given a request that got no answer, for one of the reasons the client tells apart
    # When it is classified
    verdict = classified(Failure(failed, "SomeError: what happened"))
    # Then it is retried (or pauses everyone), named for what went wrong in the reason, the
    # error and the answer class, and only a timeout after sending leaves the outcome unknown
    assert verdict == Verdict(
        outcome,
        error=f"{failed.value}: SomeError: what happened",
        reason=reason,
        unknown=unknown,
        answer=failed.value,
    )


def test_a_long_network_error_is_cut_to_the_limit() -> None:
    verdict = classified(Failure(Failed.REFUSED, "e" * 5000))
    assert verdict.error is not None
    assert len(verdict.error) == ERROR_LIMIT


@pytest.mark.parametrize(
    ("result", "slows"),
    [
        pytest.param(httpx.Response(429), True, id="429"),
        pytest.param(Failure(Failed.TIMEOUT_AFTER_SEND, "x"), True, id="timeout-after-send"),
        pytest.param(httpx.Response(403), False, id="403"),
        pytest.param(httpx.Response(401), False, id="401"),
        pytest.param(httpx.Response(301), False, id="301"),
        pytest.param(Failure(Failed.TLS, "x"), False, id="tls"),
        pytest.param(httpx.Response(503), False, id="503"),
    ],
)
def test_a_429_and_a_timeout_after_sending_slow_the_shared_pace(
    result: httpx.Response | Failure, slows: bool
) -> None:
    assert classified(result).slows_down is slows


# --------------------------------------------------------------------------------- giving up


def given_up(unknown: int, last_status: int | None) -> str:
    event = GoalEvent("e", "v", "signup", NOW, attempts=5, last_status=last_status)
    return give_up_reason(replace(event, unknown_attempts=unknown))


@pytest.mark.parametrize(
    ("unknown", "last_status", "reason"),
    [
        (0, None, "expired"),
        (0, 503, "expired"),
        (1, None, "maybe_delivered"),
        (3, 503, "maybe_delivered"),
        (2, 200, "unexpected_response"),
        (1, 204, "unexpected_response"),
    ],
)
def test_a_goal_given_up_on_says_whether_datafast_may_have_it(
    unknown: int, last_status: int | None, reason: str
) -> None:
    # Given a goal out of time or of unknown attempts, after some unknown outcomes
    # Then its dead letter says whether a replay may send DataFast a goal it already has
    assert given_up(unknown, last_status) == reason


# ------------------------------------------------------------------------------ error message


@pytest.mark.parametrize(
    ("response", "message"),
    [
        pytest.param(
            datafast_error(400, "Goal name is reserved"), "Goal name is reserved", id="datafast"
        ),
        pytest.param(
            httpx.Response(400, json={"status": "error", "error": "bad metadata"}),
            "bad metadata",
            id="error-string",
        ),
        pytest.param(
            httpx.Response(400, json={"message": "Visitor is a bot"}),
            "Visitor is a bot",
            id="top-level-message",
        ),
        pytest.param(httpx.Response(400, json=["odd"]), '["odd"]', id="json-list"),
        pytest.param(
            httpx.Response(502, text="<h1>Bad gateway</h1>"), "<h1>Bad gateway</h1>", id="html"
        ),
        pytest.param(httpx.Response(503), "Service Unavailable", id="empty-body-reason-phrase"),
        pytest.param(
            httpx.Response(
                400, json={"status": "error", "error": {"code": 400, "message": "m" * 900}}
            ),
            "m" * ERROR_LIMIT,
            id="cut-to-limit",
        ),
        pytest.param(
            httpx.Response(500, text="x" * 900), "x" * ERROR_LIMIT, id="text-cut-to-limit"
        ),
    ],
)
def test_error_message_is_read_from_the_body(response: httpx.Response, message: str) -> None:
    assert classified(response).error == message


# --------------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 7 ", 7.0, id="seconds-padded"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("2.5", 2.5, id="fraction"),
        pytest.param("3600", MAX_WAIT, id="seconds-clamped"),
        pytest.param("-5", 0.0, id="negative-seconds"),
        pytest.param(http_date(NOW + 30), 30.0, id="http-date"),
        pytest.param(http_date(NOW + 86_400), MAX_WAIT, id="http-date-clamped"),
        pytest.param(http_date(NOW - 30), 0.0, id="http-date-in-the-past"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
        pytest.param("Wed, 31 Feb 2026 07:28:00 GMT", None, id="impossible-date"),
        pytest.param("", None, id="empty"),
    ],
)
def test_429_honours_retry_after(header: str, expected: float | None) -> None:
    # Given a 429 with a Retry-After hint in seconds or as an HTTP-date
    response = httpx.Response(429, headers={"Retry-After": header})
    # When it is classified
    verdict = classified(response)
    # Then delivery pauses for the hint, clamped to [0, max_wait], or for the default (None)
    assert verdict.outcome is Outcome.DEFERRED
    assert verdict.reason == "rate_limited"
    if expected is None:
        assert verdict.retry_after is None
    else:
        assert verdict.retry_after == pytest.approx(expected)


def test_429_without_retry_after_has_no_hint() -> None:
    verdict = classified(httpx.Response(429))
    expected = Verdict(Outcome.DEFERRED, 429, "Too Many Requests", "rate_limited", answer="4xx")
    assert verdict == expected


@pytest.mark.parametrize("status", [401, 403])
def test_a_pause_for_auth_or_suspension_also_reads_retry_after(status: int) -> None:
    verdict = classified(datafast_error(status, "no", **{"Retry-After": "12"}))
    assert verdict.retry_after == 12.0


def test_retry_after_is_not_read_for_a_transient_error() -> None:
    verdict = classified(httpx.Response(503, headers={"Retry-After": "12"}))
    assert verdict.outcome is Outcome.TRANSIENT
    assert verdict.retry_after is None


def test_retry_after_none_is_none() -> None:
    assert retry_after(None, now=NOW, max_wait=MAX_WAIT) is None


# -------------------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (1, 1.0, 900.0, 1.0),
        (2, 1.0, 900.0, 2.0),
        (3, 1.0, 900.0, 4.0),
        (10, 1.0, 900.0, 512.0),
        (11, 1.0, 900.0, 900.0),
        (1, 0.05, 0.5, 0.05),
        (4, 0.05, 0.5, 0.4),
        (5, 0.05, 0.5, 0.5),
        (0, 1.0, 900.0, 1.0),
        (-3, 1.0, 900.0, 1.0),
        (10_000, 1.0, 900.0, 900.0),
    ],
)
def test_backoff_is_full_jitter_under_a_capped_exponential(
    attempt: int, base: float, cap: float, ceiling: float
) -> None:
    # Given the largest draw, the wait is the exponential ceiling (capped)
    assert backoff(attempt, base=base, cap=cap, rand=lambda: 1.0) == pytest.approx(ceiling)
    # Given the smallest draw, the wait is nothing at all
    assert backoff(attempt, base=base, cap=cap, rand=lambda: 0.0) == 0.0
    # Given a middle draw, the wait is that fraction of the ceiling
    assert backoff(attempt, base=base, cap=cap, rand=lambda: 0.5) == pytest.approx(ceiling / 2)


def test_backoff_uses_the_default_random_within_its_bounds() -> None:
    for attempt in range(1, 15):
        assert 0.0 <= backoff(attempt, base=1.0, cap=60.0) <= min(60.0, 2.0 ** (attempt - 1))


@pytest.mark.parametrize(
    ("streak", "expected"),
    [(0, 1.0), (1, 2.0), (2, 4.0), (6, 64.0), (7, 100.0), (-1, 1.0), (10**6, 100.0)],
)
def test_pause_length_doubles_per_streak_up_to_the_cap(streak: int, expected: float) -> None:
    assert pause_length(streak, base=1.0, cap=100.0) == expected
