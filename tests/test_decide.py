"""decide(), table by table: what becomes of a taken goal before sending and after each answer."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from goalqueue.event import GoalEvent
from tests.helpers.datafast import error, ok
from workers.decide import Act, Decision, Rules, decide
from workers.policy import Failed, Failure, classify
from workers.scripts import GoalCopy, Standing

NOW = 1_000_000.0
RULES = Rules(max_age=3600.0, max_unknown_attempts=3, retry_base=1.0, retry_max=60.0)
EVENT = GoalEvent("e1", "v1", "signup", enqueued_at=NOW - 10)


def taken(standing: Standing, event: GoalEvent = EVENT, streak: int = 0) -> GoalCopy:
    return GoalCopy(event.event_id, 7, standing, event.to_json(), streak)


def before(goal: GoalCopy, wait: float = 0.0) -> Decision:
    return decide(goal, None, NOW, RULES, wait=wait)


# ---------------------------------------------------------------------------- before sending

OLD = replace(EVENT, enqueued_at=NOW - 3601)
OLD_UNKNOWN = replace(OLD, unknown_attempts=1, last_status=None)


@pytest.mark.parametrize(
    ("goal", "wait", "act", "why", "until", "release"),
    [
        (taken(Standing.GONE), 0, Act.DROP, "", 0.0, False),
        (taken(Standing.DONE), 0, Act.FORGET, "", 0.0, False),
        (taken(Standing.SEND), 0, Act.SEND, "", 0.0, False),
        (taken(Standing.PROBE), 0, Act.SEND, "", 0.0, False),
        (taken(Standing.HOLD), 0, Act.HOLD, "paused", NOW, False),
        (taken(Standing.HOLD), 2.5, Act.HOLD, "pace", NOW + 2.5, False),
        (taken(Standing.SEND, OLD), 0, Act.DEAD, "expired", 0.0, False),
        (taken(Standing.PROBE, OLD), 0, Act.DEAD, "expired", 0.0, True),
        (taken(Standing.HOLD, OLD_UNKNOWN), 0, Act.DEAD, "maybe_delivered", 0.0, False),
    ],
    ids=[
        "gone",
        "done",
        "send",
        "probe",
        "paused",
        "pace",
        "expired",
        "expired-probe",
        "expired-unknown",
    ],
)
def test_before_sending(
    goal: GoalCopy, wait: float, act: Act, why: str, until: float, release: bool
) -> None:
    decision = before(goal, wait)
    assert (decision.act, decision.why, decision.until, decision.release) == (
        act,
        why,
        until,
        release,
    )
    assert (decision.letter is not None) == (act is Act.DEAD)


# Paused by hand: OLD (3601 s since enqueue, max age 3600 s) with a minute of it paused by hand.
MINUTE_PAUSED = ((NOW - 1000, NOW - 940),)


@pytest.mark.parametrize(
    ("goal", "paused", "act", "why"),
    [
        (taken(Standing.HALT), (), Act.HOLD, "operator"),
        (taken(Standing.HALT, OLD), (), Act.HOLD, "operator"),
        (taken(Standing.HALT, OLD_UNKNOWN), (), Act.HOLD, "operator"),
        (taken(Standing.SEND, OLD), MINUTE_PAUSED, Act.SEND, ""),
        (taken(Standing.SEND, OLD), ((NOW - 9000, NOW - 8000),), Act.DEAD, "expired"),
        (taken(Standing.SEND, OLD), ((NOW - 3602, NOW - 3601.5),), Act.DEAD, "expired"),
        (taken(Standing.SEND, OLD), ((NOW - 3700, NOW - 3599),), Act.SEND, ""),
        (taken(Standing.HOLD, OLD), MINUTE_PAUSED, Act.HOLD, "paused"),
    ],
    ids=[
        "halted",
        "halted-never-expires",
        "halted-never-gives-up",
        "paused-by-hand-time-left-out",
        "pause-before-enqueue-counts-not",
        "pause-before-enqueue-partly",
        "pause-overlapping-enqueue",
        "held-by-datafast-after-a-pause-by-hand",
    ],
)
def test_max_age_leaves_out_time_paused_by_hand(
    goal: GoalCopy, paused: tuple[tuple[float, float], ...], act: Act, why: str
) -> None:
    decision = decide(goal, None, NOW, RULES, paused=paused)
    assert (decision.act, decision.why) == (act, why)
    assert decision.letter is None if act is not Act.DEAD else decision.letter is not None
    if act is Act.HOLD:
        assert decision.until == NOW  # the sweepers bring it back once the pause ends


def test_an_entry_that_does_not_parse_is_poison_and_frees_the_probe() -> None:
    goal = GoalCopy("e1", 7, Standing.PROBE, '{"i": "e1", "bogus": 1}', 0)
    decision = before(goal)
    assert (decision.act, decision.why, decision.release) == (Act.DEAD, "poison", True)
    assert decision.letter is not None and decision.letter.raw == goal.entry


# ------------------------------------------------------------------------ after the answer


def answered(
    answer: object, standing: Standing = Standing.SEND, event: GoalEvent = EVENT, streak: int = 0
) -> Decision:
    verdict = classify(answer, now=NOW, max_wait=3600.0)  # type: ignore[arg-type]
    return decide(taken(standing, event, streak), verdict, NOW, RULES, jitter=0.5)


SLOW = Failure(Failed.TIMEOUT_AFTER_SEND, "ReadTimeout")
REFUSED = Failure(Failed.REFUSED, "connection refused")
HTML = httpx.Response(200, text="<html>a captive portal</html>")


@pytest.mark.parametrize(
    ("answer", "act", "why", "until", "pause"),
    [
        (ok(), Act.DELIVERED, "", 0.0, None),
        (error(400), Act.DEAD, "bad_request", 0.0, None),
        (error(404), Act.DEAD, "unknown_visitor", 0.0, None),
        (error(422), Act.DEAD, "client_error", 0.0, None),
        (error(429, **{"Retry-After": "5"}), Act.WAIT, "rate_limited", NOW, ("rate_limited", 5.0)),
        (error(403), Act.WAIT, "suspended", NOW, ("suspended", 1.0)),
        (error(401), Act.WAIT, "auth", NOW, ("auth", 1.0)),
        (error(503), Act.WAIT, "server_error", NOW + 0.5, None),
        (REFUSED, Act.WAIT, "connection_refused", NOW + 0.5, None),
        (SLOW, Act.WAIT, "slow", NOW, ("slow", 1.0)),
    ],
    ids=["200", "400", "404", "422", "429", "403", "401", "503", "refused", "slow"],
)
def test_after_the_answer(
    answer: object, act: Act, why: str, until: float, pause: tuple[str, float] | None
) -> None:
    decision = answered(answer)
    assert (decision.act, decision.why, decision.until) == (act, why, until)
    assert (
        None if decision.pause is None else (decision.pause.reason, decision.pause.seconds)
    ) == (pause)
    if act is not Act.DELIVERED:
        assert decision.event is not None and decision.event.attempts == 1


def test_a_delivery_says_how_long_after_enqueue_and_datafasts_id() -> None:
    decision = answered(ok())
    assert (decision.latency, decision.remote_id) == (10.0, "e" * 24)


def test_a_retry_waits_a_jittered_share_of_a_backoff_that_doubles() -> None:
    third = replace(EVENT, attempts=2)  # this answer is its third attempt
    verdict = classify(error(503), now=NOW, max_wait=3600.0)
    for jitter, until in ((0.0, NOW), (0.5, NOW + 2.0), (0.999, NOW + 3.996)):
        assert decide(taken(Standing.SEND, third), verdict, NOW, RULES, jitter=jitter).until == (
            pytest.approx(until)
        )


@pytest.mark.parametrize(
    ("answer", "resume"),
    [(ok(), True), (error(503), True), (error(400), True), (error(429), False)],
)
def test_the_probe_resumes_delivery_on_any_answer_but_a_deferring_one(
    answer: object, resume: bool
) -> None:
    assert answered(answer, Standing.PROBE).resume is resume
    assert answered(answer, Standing.SEND).resume is False


def test_a_probe_deferred_again_grows_the_pause_from_its_streak() -> None:
    decision = answered(error(403), Standing.PROBE, streak=3)
    assert decision.pause is not None
    assert (decision.pause.streak, decision.pause.seconds, decision.pause.until) == (
        4,
        16.0,
        NOW + 16.0,
    )


def test_a_429_and_a_timeout_after_sending_slow_the_pace_a_403_does_not() -> None:
    slows = {
        name: answered(answer).pause.slows  # type: ignore[union-attr]
        for name, answer in (("429", error(429)), ("slow", SLOW), ("403", error(403)))
    }
    assert slows == {"429": True, "slow": True, "403": False}


@pytest.mark.parametrize(
    ("answer", "reason", "paused"),
    [
        (SLOW, "maybe_delivered", True),
        (ok().__class__(200, text="<html>"), "unexpected_response", False),
    ],
    ids=["timeout-after-send", "html-200"],
)
def test_an_unknown_outcome_at_its_cap_is_dead_lettered(
    answer: object, reason: str, paused: bool
) -> None:
    twice_unknown = replace(EVENT, unknown_attempts=2)
    decision = answered(answer, event=twice_unknown)
    assert (decision.act, decision.why) == (Act.DEAD, reason)
    assert decision.event is not None and decision.event.unknown_attempts == 3
    assert (decision.pause is not None) is paused
