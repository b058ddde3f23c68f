"""The outcome policy: what one answer from DataFast means for the goal, as a pure function.

DataFast's success body   DELIVERED
any other 2xx             TRANSIENT  outcome unknown: retried (see below), ``unexpected_response``
3xx                       DEFERRED   pause everyone: the URL is wrong (``redirect``)
400, 404, other 4xx       PERMANENT  dead letter at once, never retried
401                       DEFERRED   pause everyone: the key is wrong, not the goal
403                       DEFERRED   pause everyone: tracking suspended or no permission
429                       DEFERRED   pause everyone for Retry-After (seconds or HTTP date)
5xx, anything else        TRANSIENT  retry this goal after backoff with full jitter
TLS failure               DEFERRED   pause everyone: the URL or the certificates are wrong
timeout after sending     DEFERRED   outcome unknown: pause everyone, DataFast is ``slow``
refused, reset, timeout   TRANSIENT  retry this goal after backoff with full jitter
before sending, others

A goal whose outcome stays unknown (DataFast may have it) is tried at most
``GOALQUEUE_MAX_UNKNOWN_ATTEMPTS`` times, then dead-lettered: see :func:`give_up_reason`.

A request that got no answer comes here as a :class:`Failure`: the HTTP client
(:mod:`workers.client`) names what went wrong, once, at the edge. A 429 and a timeout after
sending also slow the shared pace: DataFast is struggling.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import httpx

from goalqueue.event import GoalEvent

ERROR_LIMIT = 500
# A Retry-After hint is honoured up to this long; a longer one is most likely a mistake, and the
# probe after the pause will simply be told to wait again.
RETRY_AFTER_MAX_SECONDS = 3600.0


class Outcome(StrEnum):
    DELIVERED = "delivered"
    PERMANENT = "permanent"
    DEFERRED = "deferred"
    TRANSIENT = "transient"


class Failed(StrEnum):
    """Why a request got no answer; each is also its answer class in the counters."""

    REFUSED = "connection_refused"  # no connection: refused, unreachable, unknown host
    RESET = "connection_reset"  # the connection was reset or closed before the answer
    TLS = "tls_error"  # the TLS handshake failed: certificate, protocol
    TIMEOUT_BEFORE_SEND = "timeout_before_send"  # no connection in time: DataFast has nothing
    TIMEOUT_AFTER_SEND = "timeout_after_send"  # sent, no answer in time: DataFast may have it
    OTHER = "connection_error"  # anything else (a broken HTTP answer, a proxy error)


@dataclass(frozen=True)
class Failure:
    """A request that got no answer: what went wrong, and the error's text."""

    failed: Failed
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What to do with a goal after one attempt.

    ``reason`` names the dead-letter reason (PERMANENT), the pause reason (DEFERRED) or what
    went wrong (TRANSIENT); ``retry_after`` is the server's hint in seconds, already clamped;
    ``remote_id`` is the event id DataFast gave a delivered goal; ``unknown`` says DataFast may
    have taken the goal though it did not say so; ``answer`` is the answer's class in the
    counters.
    """

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    remote_id: str | None = None
    unknown: bool = False
    answer: str = ""

    @property
    def slows_down(self) -> bool:
        """Whether the pause this calls for also halves the shared pace."""
        return self.reason in _SLOWING_REASONS


_PERMANENT_REASONS = {400: "bad_request", 404: "unknown_visitor"}
_PAUSE_REASONS = {401: "auth", 403: "suspended", 429: "rate_limited"}
_SLOWING_REASONS = {"rate_limited", "slow"}
_FAILURE_PAUSES = {Failed.TLS: "tls", Failed.TIMEOUT_AFTER_SEND: "slow"}


def classify(result: httpx.Response | Failure, *, now: float, max_wait: float) -> Verdict:
    """Decide what one attempt's result means; ``max_wait`` bounds a Retry-After hint."""
    if isinstance(result, Failure):
        return _failure_verdict(result)
    status = result.status_code
    answer = f"{status // 100}xx"
    if 200 <= status < 300:
        return _success_verdict(result)
    error = _error_message(result)
    if 300 <= status < 400:
        location = result.headers.get("location", "")
        return Verdict(Outcome.DEFERRED, status, f"redirect to {location!r}"[:ERROR_LIMIT],
                       "redirect", answer=answer)  # fmt: skip
    if status in _PAUSE_REASONS:
        hint = retry_after(result.headers.get("retry-after"), now=now, max_wait=max_wait)
        return Verdict(Outcome.DEFERRED, status, error, _PAUSE_REASONS[status], hint,
                       answer=answer)  # fmt: skip
    if 400 <= status < 500:
        reason = _PERMANENT_REASONS.get(status, "client_error")
        return Verdict(Outcome.PERMANENT, status, error, reason, answer=answer)
    return Verdict(Outcome.TRANSIENT, status, error, "server_error", answer=answer)


def _failure_verdict(failure: Failure) -> Verdict:
    error = f"{failure.failed.value}: {failure.detail}"[:ERROR_LIMIT]
    unknown = failure.failed is Failed.TIMEOUT_AFTER_SEND
    if (pause := _FAILURE_PAUSES.get(failure.failed)) is not None:
        return Verdict(Outcome.DEFERRED, None, error, pause, unknown=unknown, answer=failure.failed)
    return Verdict(Outcome.TRANSIENT, None, error, failure.failed.value, answer=failure.failed)


def _success_verdict(response: httpx.Response) -> Verdict:
    """DELIVERED for DataFast's success body; anything else is not proof of delivery."""
    status = response.status_code
    body = _json(response)
    if isinstance(body, dict) and body.get("status") == "success" and "data" in body:
        return Verdict(Outcome.DELIVERED, status, remote_id=_remote_id(body["data"]), answer="2xx")
    error = f"not DataFast's success body: {_first_bytes(response)}"[:ERROR_LIMIT]
    return Verdict(Outcome.TRANSIENT, status, error, "unexpected_response", unknown=True,
                   answer="unexpected_2xx")  # fmt: skip


def give_up_reason(event: GoalEvent) -> str:
    """The dead-letter reason of a goal given up on for its age or its unknown outcomes:
    ``expired`` when DataFast cannot have it, ``unexpected_response`` when its last answer was
    a 2xx that was not DataFast's, ``maybe_delivered`` after any other unknown outcome (a
    timeout after sending). A replay of the last two may send DataFast a goal it has."""
    if event.unknown_attempts == 0:
        return "expired"
    if event.last_status is not None and 200 <= event.last_status < 300:
        return "unexpected_response"
    return "maybe_delivered"


def retry_after(value: str | None, *, now: float, max_wait: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), clamped to
    ``[0, max_wait]``; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), max_wait)


def backoff(
    attempt: int, *, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**(attempt-1))]``."""
    return rand() * pause_length(attempt - 1, base=base, cap=cap)


def pause_length(streak: int, *, base: float, cap: float) -> float:
    """How long a pause without a Retry-After lasts after ``streak`` earlier pauses in a row."""
    return min(cap, base * 2.0 ** min(max(streak, 0), 62))


def _json(response: httpx.Response) -> object:
    """The body as JSON, or None when it is not JSON."""
    try:  # json.loads on the bytes: response.json() first decodes them to text, at twice the cost
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return None


def _remote_id(data: object) -> str | None:
    """DataFast's event id from ``data``: ``[{"eventId": ...}]`` or ``{"eventId": ...}``."""
    if isinstance(data, list):
        data = data[0] if data else None
    event_id = data.get("eventId") if isinstance(data, dict) else None
    return str(event_id) if event_id is not None else None


def _first_bytes(response: httpx.Response) -> str:
    """What the body began with, as text (an empty body says so)."""
    head = response.content[:200].decode("utf-8", "replace")
    return repr(head) if head else "an empty body"


def _error_message(response: httpx.Response) -> str:
    """The message from DataFast's error body, or the start of whatever the body was."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return response.text[:ERROR_LIMIT] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:ERROR_LIMIT]
        if isinstance(error, str):
            return error[:ERROR_LIMIT]
        if body.get("message"):
            return str(body["message"])[:ERROR_LIMIT]
    return json.dumps(body)[:ERROR_LIMIT]
