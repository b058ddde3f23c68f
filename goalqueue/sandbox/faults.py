"""Injected faults: what they are, how a change to them is checked, and what each one answers."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from goalqueue.sandbox.answers import Refusal, RetryAfter


@dataclass
class FailNext:
    """Answer the next ``count`` goal requests with ``status`` (429s carry ``retry_after``)."""

    status: int
    count: int = 1
    retry_after: RetryAfter | None = None

    def take(self) -> bool:
        """Use up one failure; False once the count is spent."""
        if self.count <= 0:
            return False
        self.count -= 1
        return True


@dataclass
class RateLimit:
    """429 with ``retry_after`` beyond ``per_second`` goal requests a second, or for every one.

    With ``per_second`` it is a token bucket that holds one second's worth of requests (at
    least one), starts full and refills continuously; without, every request is refused.
    """

    retry_after: RetryAfter = 1
    per_second: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    _tokens: float = field(init=False, repr=False, compare=False)
    _refilled: float = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._tokens, self._refilled = self.capacity, self.clock()

    @property
    def capacity(self) -> float:
        return 0.0 if self.per_second is None else max(self.per_second, 1.0)

    def allows(self) -> bool:
        """Take a token for one request; False when the request is to be refused."""
        if self.per_second is None:
            return False
        with self._lock:
            now = self.clock()
            refill = (now - self._refilled) * self.per_second
            self._tokens, self._refilled = min(self.capacity, self._tokens + refill), now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"retry_after": n}``, with ``per_second`` when it is a real limit."""
        if self.per_second is None:
            return {"retry_after": self.retry_after}
        return {"per_second": self.per_second, "retry_after": self.retry_after}


class OddAnswer(StrEnum):
    """An answer to every goal request that is not DataFast's (after any latency).

    The first three come from something in front of DataFast, which never sees the goal; a
    ``truncated`` answer is DataFast's success (the goal is taken) cut short.
    """

    HTML = "html"  # 200 with an HTML page: a captive portal, a proxy, a wrong URL
    NO_CONTENT = "no_content"  # 204, no body
    REDIRECT = "redirect"  # 301 to another URL
    TRUNCATED = "truncated"  # 200 with half of DataFast's success body


@dataclass(frozen=True)
class Faults:
    """Injected faults; replaced as a whole on every change, so readers never see half an update.

    A change to other faults keeps the same ``rate_limit`` (and its bucket's level).
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    fail_next: FailNext | None = None
    rate_limit: RateLimit | None = None
    suspended: bool = False
    hang: bool = False
    odd_answer: OddAnswer | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as the admin endpoints show it."""
        fail_next = self.fail_next
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "fail_next": dataclasses.asdict(fail_next) if fail_next and fail_next.count else None,
            "rate_limit": None if self.rate_limit is None else self.rate_limit.to_dict(),
            "suspended": self.suspended,
            "hang": self.hang,
            "odd_answer": self.odd_answer,
        }


# --------------------------------------------------------------------------- checking changes


def _number(value: Any, name: str, low: float, high: float = float("inf")) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}]")
    return float(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def _retry_after(value: Any) -> RetryAfter:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ValueError("retry_after must be whole seconds or a non-empty string")
    if isinstance(value, int) and value < 0:
        raise ValueError("retry_after must not be negative")
    return value


def _fail_next(value: Any) -> FailNext | None:
    if value is None:
        return None
    if isinstance(value, FailNext):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping) or not set(value) <= {"status", "count", "retry_after"}:
        raise ValueError('fail_next must be {"status": int, "count": int, "retry_after": ...}')
    status, count = value.get("status"), value.get("count", 1)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError("fail_next.status must be an HTTP error status (400-599)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("fail_next.count must be a non-negative integer")
    retry = value.get("retry_after")
    return FailNext(status, count, None if retry is None else _retry_after(retry))


def _rate_limit(value: Any) -> RateLimit | None:
    if value is None or value is False:
        return None
    if value is True:
        return RateLimit()
    if isinstance(value, RateLimit):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        return RateLimit(_retry_after(value))
    if not set(value) <= {"per_second", "retry_after"}:
        raise ValueError('rate_limit must be {"per_second": n, "retry_after": ...}')
    per_second = value.get("per_second")
    if per_second is not None:
        per_second = _number(per_second, "rate_limit.per_second", 0)
        if per_second == 0:
            raise ValueError("rate_limit.per_second must be more than 0")
    return RateLimit(_retry_after(value.get("retry_after", 1)), per_second)


def _odd_answer(value: Any) -> OddAnswer | None:
    if value is None:
        return None
    try:
        return OddAnswer(value)
    except (TypeError, ValueError):
        kinds = ", ".join(kind.value for kind in OddAnswer)
        raise ValueError(f"odd_answer must be one of {kinds} or null") from None


_FAULT_PARSERS: dict[str, Callable[[Any], Any]] = {
    "latency_ms": lambda v: _number(v, "latency_ms", 0),
    "error_rate": lambda v: _number(v, "error_rate", 0, 1),
    "fail_next": _fail_next,
    "rate_limit": _rate_limit,
    "suspended": lambda v: _flag(v, "suspended"),
    "hang": lambda v: _flag(v, "hang"),
    "odd_answer": _odd_answer,
}


def parse_fault_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Check a partial fault update and convert it to ``Faults`` field values.

    Accepted forms: ``latency_ms`` >= 0; ``error_rate`` in [0, 1]; ``fail_next`` a
    ``FailNext``, ``{"status", "count", "retry_after"}`` or null; ``rate_limit``
    ``{"per_second": n, "retry_after": n}`` (429 beyond n goal requests a second), or 429 for
    every request with ``{"retry_after": n}``, a Retry-After value or true (1 s), or a
    ``RateLimit``; null/false turns it off; ``suspended`` and ``hang`` booleans;
    ``odd_answer`` one of :class:`OddAnswer`'s values or null. Raises ValueError on anything
    else.
    """
    unknown = set(changes) - _FAULT_PARSERS.keys()
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
    return {name: _FAULT_PARSERS[name](value) for name, value in changes.items()}


# --------------------------------------------------------------------------- applying them

_FAULT_MESSAGES: dict[int, str] = {
    401: "Invalid API key",
    403: "Tracking suspended for this website",
    429: "Too many requests",
    503: "Service unavailable",
}


def check_faults(faults: Faults) -> None:
    """Raise the refusal an injected fault calls for, if any.

    In this order: ``fail_next``, ``suspended``, ``rate_limit``, ``error_rate``; a request
    refused by an earlier one takes no token from the rate limit's bucket.
    """
    fail_next = faults.fail_next
    if fail_next is not None and fail_next.take():
        message = _FAULT_MESSAGES.get(fail_next.status) or HTTPStatus(fail_next.status).phrase
        raise Refusal(fail_next.status, message, fail_next.retry_after)
    if faults.suspended:
        raise Refusal(403, _FAULT_MESSAGES[403])
    rate_limit = faults.rate_limit
    if rate_limit is not None and not rate_limit.allows():
        raise Refusal(429, _FAULT_MESSAGES[429], rate_limit.retry_after)
    if faults.error_rate and random.random() < faults.error_rate:
        raise Refusal(503, _FAULT_MESSAGES[503])
