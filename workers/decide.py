"""What becomes of one taken copy of a goal: a pure function of what TAKE said, DataFast's answer,
the time and the rules.

    decide(goal, None, now, rules, wait=..., paused=...)   before sending: send it, or why not
    decide(goal, verdict, now, rules, jitter=...)     after DataFast answered (workers.policy)

====================================  =====================================================
TAKE said / DataFast answered          decision
====================================  =====================================================
gone (stale copy)                      DROP
poison (a sequence never handed out)   DEAD poison (the message, as it was)
the entry does not parse               DEAD poison
done (delivered before)                FORGET the entry
halt (paused by hand)                  HOLD until ``now``, for the sweepers to bring back once
                                       the pause by hand ends (``operator``); never expired
older than GOALQUEUE_MAX_AGE_SECONDS   DEAD expired (maybe_delivered, unexpected_response);
  (time paused by hand left out)       the age leaves out TAKE's ``paused`` spans
hold (paused, or no pace token)        HOLD until ``now + wait`` (0 while paused)
send, probe                            SEND
DELIVERED                              DELIVERED (+ resume, for the probe)
PERMANENT                              DEAD (bad_request, unknown_visitor, client_error)
DEFERRED                               WAIT until now + PAUSE everyone (reason, until)
TRANSIENT                              WAIT until now + backoff with full jitter
unknown outcome at its cap             DEAD maybe_delivered / unexpected_response
====================================  =====================================================

The probe (the one goal let through when a pause ends) resumes delivery when it gets any answer
but a deferring one, and releases its slot when it is settled without a request.
:class:`Decision` says all of it; the recorder (:mod:`workers.recording`) turns it into writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from goalqueue.config import Settings
from goalqueue.deadletters import DeadLetter
from goalqueue.event import GoalEvent
from goalqueue.pausing import Span, paused_between
from workers.policy import (
    Outcome,
    Verdict,
    backoff,
    give_up_reason,
    pause_length,
)
from workers.scripts import GoalCopy, Standing


class Act(StrEnum):
    """What is done with a copy; every act but SEND is also the result Flower shows."""

    SEND = "send"
    DELIVERED = "delivered"
    DEAD = "dead"
    WAIT = "waiting"
    HOLD = "held"
    FORGET = "already delivered"
    DROP = "stale copy"


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings :func:`decide` follows, read once."""

    max_age: float
    max_unknown_attempts: int
    retry_base: float
    retry_max: float

    @classmethod
    def of(cls, settings: Settings) -> Rules:
        return cls(
            settings.max_age_seconds,
            settings.max_unknown_attempts,
            settings.retry_base_seconds,
            settings.retry_max_seconds,
        )


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause for every worker: until when, why, the streak it extends, whether it also slows
    the shared pace (a 429, a timeout after sending), and the answer (its status, or what went
    wrong) and error, for the log."""

    reason: str
    until: float
    seconds: float
    streak: int
    slows: bool
    answer: str = ""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one copy. ``event`` is the goal as it is sent or stored (after the
    attempt); ``why`` names the dead-letter reason, or why it waits; ``until`` is when a
    waiting or held goal is due; ``letter`` is its dead letter; ``remote_id`` and ``latency``
    (enqueue to answer) describe a delivery."""

    act: Act
    event: GoalEvent | None = None
    why: str = ""
    until: float = 0.0
    letter: DeadLetter | None = None
    pause: Pause | None = None
    resume: bool = False
    release: bool = False
    remote_id: str = ""
    latency: float = 0.0


def decide(
    goal: GoalCopy,
    verdict: Verdict | None,
    now: float,
    rules: Rules,
    *,
    wait: float = 0.0,
    paused: Sequence[Span] = (),
    jitter: float = 0.5,
    sent: GoalEvent | None = None,
) -> Decision:
    """The decision for ``goal`` at ``now``: before sending (``verdict`` None; a held goal is
    due after TAKE's ``wait``; its age leaves out the time ``paused`` by hand), or after
    DataFast's answer to ``sent`` (the event the decision to send carried; parsed from the entry
    when not given) was classified as ``verdict`` (``jitter``, a draw from [0, 1), places a
    retry within its backoff)."""
    if verdict is None:
        return _before_sending(goal, now, rules, wait, paused)
    event = sent if sent is not None else GoalEvent.from_json(goal.entry)
    return _answered(goal, event, verdict, now, rules, jitter)


def _before_sending(
    goal: GoalCopy, now: float, rules: Rules, wait: float, paused: Sequence[Span]
) -> Decision:
    if goal.standing is Standing.GONE:
        return Decision(Act.DROP)
    if goal.standing is Standing.POISON:
        letter = DeadLetter.poison(goal.entry, "sequence never handed out")
        return Decision(Act.DEAD, why="poison", letter=letter)
    release = goal.standing is Standing.PROBE
    try:
        event = GoalEvent.from_json(goal.entry)
    except ValueError as exc:
        letter = DeadLetter.poison(goal.entry, str(exc))
        return Decision(Act.DEAD, why="poison", letter=letter, release=release)
    if goal.standing is Standing.DONE:
        return Decision(Act.FORGET, event)
    if goal.standing is Standing.HALT:
        return Decision(Act.HOLD, event, "operator", until=now)
    if now - event.enqueued_at - paused_between(paused, event.enqueued_at, now) > rules.max_age:
        return _dead(event, give_up_reason(event), release=release)
    if goal.standing is Standing.HOLD:
        why = "paused" if wait == 0 else "pace"
        return Decision(Act.HOLD, event, why, until=now + wait)
    return Decision(Act.SEND, event)


def _answered(
    goal: GoalCopy, event: GoalEvent, verdict: Verdict, now: float, rules: Rules, jitter: float
) -> Decision:
    probe = goal.standing is Standing.PROBE
    resume = probe and verdict.outcome is not Outcome.DEFERRED
    if verdict.outcome is Outcome.DELIVERED:
        latency = now - event.enqueued_at
        return Decision(Act.DELIVERED, event, remote_id=verdict.remote_id or "",
                        latency=latency, resume=resume)  # fmt: skip
    event = event.attempted(now, verdict.status_code, verdict.error, unknown=verdict.unknown)
    pause = _pause(goal, verdict, now, rules) if verdict.outcome is Outcome.DEFERRED else None
    if verdict.unknown and event.unknown_attempts >= rules.max_unknown_attempts:
        return _dead(event, give_up_reason(event), pause=pause, resume=resume)
    if verdict.outcome is Outcome.PERMANENT:
        return _dead(event, verdict.reason or "client_error", resume=resume)
    if verdict.outcome is Outcome.DEFERRED:
        return Decision(Act.WAIT, event, verdict.reason or "", until=now, pause=pause)
    delay = backoff(event.attempts, base=rules.retry_base, cap=rules.retry_max, rand=lambda: jitter)
    return Decision(Act.WAIT, event, verdict.reason or "transient", until=now + delay,
                    resume=resume)  # fmt: skip


def _dead(
    event: GoalEvent,
    reason: str,
    *,
    pause: Pause | None = None,
    resume: bool = False,
    release: bool = False,
) -> Decision:
    letter = DeadLetter.of(event, reason)
    return Decision(
        Act.DEAD, event, reason, letter=letter, pause=pause, resume=resume, release=release
    )


def _pause(goal: GoalCopy, verdict: Verdict, now: float, rules: Rules) -> Pause:
    """The pause a deferring answer calls for: Retry-After, or grown from the streak."""
    streak = goal.streak + 1 if goal.standing is Standing.PROBE else 0
    seconds = verdict.retry_after
    if seconds is None:
        seconds = pause_length(streak, base=rules.retry_base, cap=rules.retry_max)
    answer = str(verdict.status_code or verdict.answer)
    reason = verdict.reason or ""
    return Pause(reason, now + seconds, seconds, streak, verdict.slows_down, answer, verdict.error)
