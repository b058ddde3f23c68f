"""A local stand-in for DataFast's goals endpoint, for trying, testing and benchmarking offline.

The sandbox is a hand-written ASGI app served by uvicorn. It answers
``POST /api/v1/goals`` the way DataFast does (bearer key, field rules, bots, visitors
without pageviews) and records every request it receives, accepted or not. Faults can
be injected at start or at run time: added latency, random 503s, the next N requests
failing with a chosen status, rate limiting (429 + ``Retry-After`` for every request, or
beyond a number of requests a second), a
suspended website (403) and hanging requests (to exercise client timeouts).

Three ways to run it:

* ``Sandbox`` - a context manager that serves in a background thread on 127.0.0.1,
  for tests, demos and benchmarks; its ``state`` can be inspected and changed directly.
* ``serve()`` - blocking, in the foreground.
* ``sandbox_command`` - the click command behind ``goalqueue sandbox``.

Admin endpoints under ``/_sandbox/`` (JSON, no auth; a loopback tool):

    GET    /_sandbox/health                  {"status": "ok"}
    GET    /_sandbox/events[?status=200]     {"events": [...]}
    GET    /_sandbox/stats                   counts by status, distinct keys, duplicates, and
                                             goal requests in flight (received, not answered)
    GET    /_sandbox/faults                  the current faults
    POST   /_sandbox/faults                  partial update, e.g. {"fail_next": {"status": 503}}
    DELETE /_sandbox/faults                  clear all faults
    POST   /_sandbox/visitors                {"visitors": [...], "mode": "any" | "registered"}
    POST   /_sandbox/bots                    {"visitors": [...]}
    POST   /_sandbox/key                     {"key": "..."}
    POST   /_sandbox/reset                   forget recorded events and clear faults
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, Self
from urllib.parse import parse_qsl

import click
import uvicorn

DEFAULT_KEY = "df_sandbox"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
GOALS_PATH = "/api/v1/goals"
ADMIN_PREFIX = "/_sandbox/"

HANG_SECONDS = 300.0
"""How long a request hangs under the ``hang`` fault unless the fault is cleared first."""
_HANG_POLL_SECONDS = 0.02
_GRACEFUL_SHUTDOWN_SECONDS = 3
_STARTUP_TIMEOUT_SECONDS = 10.0
_BACKLOG = 2048

_NAME_RE = re.compile(r"[a-z0-9_:-]{1,64}")
_METADATA_KEY_RE = re.compile(r"[a-z0-9_-]{1,64}")
_METADATA_MAX_KEYS = 10
_METADATA_MAX_VALUE = 255
_RESERVED_NAMES = frozenset({"identify"})

VisitorMode = Literal["any", "registered"]
RetryAfter = int | str
"""A ``Retry-After`` value: whole seconds, or a string sent verbatim (e.g. an HTTP-date)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


# --------------------------------------------------------------------------- state


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


@dataclass(frozen=True)
class RateLimit:
    """429 with ``Retry-After: retry_after``: for every request, or only beyond ``per_second``
    goal requests a second (a token bucket that holds one second's worth)."""

    retry_after: RetryAfter = 1
    per_second: float | None = None


@dataclass(frozen=True)
class Faults:
    """Injected faults; replaced as a whole on every change, so readers never see half an update."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    fail_next: FailNext | None = None
    rate_limit: RateLimit | None = None
    suspended: bool = False
    hang: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as the admin endpoints show it."""
        fail_next = self.fail_next
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "fail_next": dataclasses.asdict(fail_next) if fail_next and fail_next.count else None,
            "rate_limit": None if self.rate_limit is None else dataclasses.asdict(self.rate_limit),
            "suspended": self.suspended,
            "hang": self.hang,
        }


@dataclass(frozen=True)
class RecordedEvent:
    """One goal request as the sandbox received and answered it.

    ``body`` is the parsed JSON (or the raw text when it was not JSON, None when empty);
    ``event_id`` is set only for accepted (200) goals.
    """

    time: float
    status: int
    body: Any
    idempotency_key: str | None
    website_id: str | None
    event_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as ``GET /_sandbox/events`` shows it."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SandboxStats:
    """Counts over the recorded requests.

    ``duplicates`` counts extra acceptances of an ``Idempotency-Key`` already accepted:
    a key accepted three times adds 2. ``in_flight`` counts goal requests received and not
    answered yet: what a client killed at this moment would send again, though they may succeed.
    """

    total: int
    by_status: dict[int, int]
    accepted: int
    distinct_keys: int
    duplicates: int
    accepted_without_key: int
    in_flight: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form (status codes become string keys)."""
        data = dataclasses.asdict(self)
        data["by_status"] = {str(status): n for status, n in sorted(self.by_status.items())}
        return data


@dataclass
class SandboxState:
    """Everything the sandbox knows: configuration, faults and recorded requests.

    The ASGI app reads it from the server thread; tests may change it from theirs.
    Plain assignments are safe; the recorded events and counters are behind a lock.
    """

    key: str = DEFAULT_KEY
    visitor_mode: VisitorMode = "any"
    visitors: set[str] = field(default_factory=set)
    bots: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)
    _events: list[RecordedEvent] = field(default_factory=list, init=False, repr=False)
    _by_status: Counter[int] = field(default_factory=Counter, init=False, repr=False)
    _accepted_keys: Counter[str] = field(default_factory=Counter, init=False, repr=False)
    _in_flight: int = field(default=0, init=False, repr=False)
    _tokens: float = field(default=0.0, init=False, repr=False)
    _tokens_at: float = field(default=0.0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def received(self) -> None:
        """A goal request came in (``answered`` follows when it is answered)."""
        with self._lock:
            self._in_flight += 1

    def answered(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def rate_limited(self, per_second: float) -> bool:
        """Whether this request goes over ``per_second`` (a bucket of one second's worth)."""
        now = time.monotonic()
        with self._lock:
            refill = (now - self._tokens_at) * per_second if self._tokens_at else per_second
            self._tokens, self._tokens_at = min(per_second, self._tokens + refill), now
            if self._tokens < 1:
                return True
            self._tokens -= 1
            return False

    def record(self, event: RecordedEvent) -> None:
        """Remember one answered request and update the counters."""
        with self._lock:
            self._events.append(event)
            self._by_status[event.status] += 1
            if event.status == HTTPStatus.OK and event.idempotency_key is not None:
                self._accepted_keys[event.idempotency_key] += 1

    def events(self, status: int | None = None) -> list[RecordedEvent]:
        """A snapshot of the recorded requests in arrival order, optionally of one status."""
        with self._lock:
            snapshot = list(self._events)
        return snapshot if status is None else [e for e in snapshot if e.status == status]

    def count(self, status: int | None = None) -> int:
        """How many requests were recorded (of one status), without copying them."""
        with self._lock:
            return len(self._events) if status is None else self._by_status[status]

    def stats(self) -> SandboxStats:
        """Counts by status, distinct accepted idempotency keys and duplicate acceptances."""
        with self._lock:
            by_status = dict(self._by_status)
            keyed = self._accepted_keys.values()
            accepted = by_status.get(HTTPStatus.OK, 0)
            return SandboxStats(
                total=len(self._events),
                by_status=by_status,
                accepted=accepted,
                distinct_keys=len(self._accepted_keys),
                duplicates=sum(n - 1 for n in keyed),
                accepted_without_key=accepted - sum(keyed),
                in_flight=self._in_flight,
            )

    def set_faults(self, changes: Mapping[str, Any]) -> Faults:
        """Partially update the faults (JSON-style values, see ``parse_fault_changes``)."""
        self.faults = dataclasses.replace(self.faults, **parse_fault_changes(changes))
        return self.faults

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.faults = Faults()

    def register_visitors(self, visitors: Iterable[str], mode: VisitorMode | None = None) -> None:
        """Mark visitors as having pageviews; optionally switch the visitor mode."""
        self.visitors.update(visitors)
        if mode is not None:
            self.visitor_mode = mode

    def add_bots(self, visitors: Iterable[str]) -> None:
        """Mark visitors as bots: their goals are refused with 400."""
        self.bots.update(visitors)

    def reset(self) -> None:
        """Forget recorded requests and clear faults; key, visitors and bots stay."""
        with self._lock:
            self._events.clear()
            self._by_status.clear()
            self._accepted_keys.clear()
        self.clear_faults()


# --------------------------------------------------------------------------- fault parsing


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
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"retry_after", "per_second"}
        if unknown:
            raise ValueError(f"rate_limit takes retry_after and per_second, not {sorted(unknown)}")
        per_second = value.get("per_second")
        return RateLimit(
            _retry_after(value.get("retry_after", 1)),
            None if per_second is None else _number(per_second, "rate_limit.per_second", 1),
        )
    return RateLimit(_retry_after(value))


_FAULT_PARSERS: dict[str, Callable[[Any], Any]] = {
    "latency_ms": lambda v: _number(v, "latency_ms", 0),
    "error_rate": lambda v: _number(v, "error_rate", 0, 1),
    "fail_next": _fail_next,
    "rate_limit": _rate_limit,
    "suspended": lambda v: _flag(v, "suspended"),
    "hang": lambda v: _flag(v, "hang"),
}


def parse_fault_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Check a partial fault update and convert it to ``Faults`` field values.

    Accepted forms: ``latency_ms`` >= 0; ``error_rate`` in [0, 1]; ``fail_next`` a
    ``FailNext``, ``{"status", "count", "retry_after"}`` or null; ``rate_limit``
    ``{"retry_after": n, "per_second": r}`` (429 beyond r goal requests a second; without
    per_second, 429 for every request), a Retry-After value, true (1 s) or null/false (off);
    ``suspended`` and ``hang`` booleans. Raises ValueError on anything else.
    """
    unknown = set(changes) - _FAULT_PARSERS.keys()
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
    return {name: _FAULT_PARSERS[name](value) for name, value in changes.items()}


# --------------------------------------------------------------------------- goal handling


class _Refusal(Exception):
    """Ends a goal request early with an error answer."""

    def __init__(self, status: int, message: str, retry_after: RetryAfter | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


_FAULT_MESSAGES: dict[int, str] = {
    401: "Invalid API key",
    403: "Tracking suspended for this website",
    429: "Too many requests",
    503: "Service unavailable",
}


async def _delay(state: SandboxState) -> None:
    """Apply the latency and hang faults without blocking the event loop."""
    if state.faults.latency_ms > 0:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    if state.faults.hang:
        deadline = time.monotonic() + HANG_SECONDS
        while state.faults.hang and time.monotonic() < deadline:
            await asyncio.sleep(_HANG_POLL_SECONDS)


def _check_faults(state: SandboxState) -> None:
    """Raise the refusal an injected fault calls for, if any."""
    faults = state.faults
    fail_next = faults.fail_next
    if fail_next is not None and fail_next.take():
        message = _FAULT_MESSAGES.get(fail_next.status) or HTTPStatus(fail_next.status).phrase
        raise _Refusal(fail_next.status, message, fail_next.retry_after)
    if faults.suspended:
        raise _Refusal(403, _FAULT_MESSAGES[403])
    limit = faults.rate_limit
    if limit is not None and (limit.per_second is None or state.rate_limited(limit.per_second)):
        raise _Refusal(429, _FAULT_MESSAGES[429], limit.retry_after)
    if faults.error_rate and random.random() < faults.error_rate:
        raise _Refusal(503, _FAULT_MESSAGES[503])


def _check_auth(state: SandboxState, authorization: str | None, website_id: str | None) -> None:
    """Bearer key must match; ``dft_`` account tokens also need ``?websiteId=``."""
    if not authorization:
        raise _Refusal(401, "Missing API key")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or token.strip() != state.key:
        raise _Refusal(401, "Invalid API key")
    if state.key.startswith("dft_") and not website_id:
        raise _Refusal(400, "websiteId query parameter is required with an account token")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _Refusal(400, "metadata must be an object")
    if len(metadata) > _METADATA_MAX_KEYS:
        raise _Refusal(400, f"metadata may have at most {_METADATA_MAX_KEYS} keys")
    for key, value in metadata.items():
        if not _METADATA_KEY_RE.fullmatch(key):
            raise _Refusal(400, f"invalid metadata key: {key!r}")
        if not isinstance(value, str) or len(value) > _METADATA_MAX_VALUE:
            raise _Refusal(400, f"metadata value for {key!r} must be a string of at most 255")


def _check_goal(body: Any) -> str:
    """Validate a goal body like DataFast does; return the visitor id."""
    if not isinstance(body, dict):
        raise _Refusal(400, "Request body must be a JSON object")
    visitor = body.get("datafast_visitor_id", body.get("visitorId"))
    if not isinstance(visitor, str) or not visitor:
        raise _Refusal(400, "datafast_visitor_id is required")
    name = body.get("name")
    if not isinstance(name, str):
        raise _Refusal(400, "name is required")
    name = name.lower().replace(" ", "_")
    if not _NAME_RE.fullmatch(name):
        raise _Refusal(400, "name must be 1-64 characters of a-z 0-9 _ - :")
    if name in _RESERVED_NAMES:
        raise _Refusal(400, f"'{name}' is a reserved goal name")
    _check_metadata(body.get("metadata"))
    if not isinstance(body.get("description", ""), str | None):
        raise _Refusal(400, "description must be a string")
    return visitor


def _check_visitor(state: SandboxState, visitor: str) -> None:
    if visitor in state.bots:
        raise _Refusal(400, "The visitor is a bot")
    if state.visitor_mode == "registered" and visitor not in state.visitors:
        raise _Refusal(404, "Visitor has no pageviews on this website")


def _new_event_id() -> str:
    """A 24-hex id shaped like a MongoDB ObjectId (4-byte time, then random)."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{os.urandom(8).hex()}"


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    """(value, True) for valid JSON; otherwise (raw text or None, False)."""
    try:
        return json.loads(raw), True
    except ValueError:
        return (raw.decode("utf-8", "replace") or None), False


async def _judge(
    state: SandboxState,
    headers: Mapping[str, str],
    website_id: str | None,
    body: Any,
    is_json: bool,
) -> _Refusal | None:
    """Apply faults and DataFast's checks; the refusal to answer with, or None to accept."""
    try:
        await _delay(state)
        _check_faults(state)
        _check_auth(state, headers.get("authorization"), website_id)
        if not is_json:
            raise _Refusal(400, "Request body is not valid JSON")
        _check_visitor(state, _check_goal(body))
    except _Refusal as refusal:
        return refusal
    return None


async def _handle_goal(state: SandboxState, scope: Scope, receive: Receive, send: Send) -> None:
    state.received()
    try:
        await _answer_goal(state, scope, receive, send)
    finally:
        state.answered()


async def _answer_goal(state: SandboxState, scope: Scope, receive: Receive, send: Send) -> None:
    raw = await _read_body(receive)
    headers = _header_map(scope)
    website_id = _query(scope).get("websiteId")
    body, is_json = _parse_json(raw)
    refusal = await _judge(state, headers, website_id, body, is_json)
    status = 200 if refusal is None else refusal.status
    event_id = _new_event_id() if refusal is None else None
    key = headers.get("idempotency-key")
    # Record before answering: whoever sees the answer also finds the record.
    state.record(RecordedEvent(time.time(), status, body, key, website_id, event_id))
    if refusal is not None:
        await _send_error(send, status, refusal.message, refusal.retry_after)
        return
    data = [{"message": "Custom event created successfully", "eventId": event_id}]
    await _send_json(send, status, {"status": "success", "data": data})


# --------------------------------------------------------------------------- admin


@dataclass(frozen=True)
class _AdminRequest:
    query: Mapping[str, str]
    json: Mapping[str, Any]


_AdminHandler = Callable[[SandboxState, _AdminRequest], dict[str, Any]]


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of non-empty strings")
    return value


def _admin_events(state: SandboxState, request: _AdminRequest) -> dict[str, Any]:
    status = request.query.get("status")
    if status is not None and not status.isdigit():
        raise ValueError("status must be an integer")
    events = state.events(None if status is None else int(status))
    return {"events": [event.to_dict() for event in events]}


def _admin_set_faults(state: SandboxState, request: _AdminRequest) -> dict[str, Any]:
    return {"faults": state.set_faults(request.json).to_dict()}


def _admin_clear_faults(state: SandboxState, request: _AdminRequest) -> dict[str, Any]:
    state.clear_faults()
    return {"faults": state.faults.to_dict()}


def _admin_visitors(state: SandboxState, request: _AdminRequest) -> dict[str, Any]:
    mode = request.json.get("mode")
    if mode not in (None, "any", "registered"):
        raise ValueError('mode must be "any" or "registered"')
    state.register_visitors(_string_list(request.json.get("visitors", []), "visitors"), mode)
    return {"mode": state.visitor_mode, "visitors": len(state.visitors)}


def _admin_bots(state: SandboxState, request: _AdminRequest) -> dict[str, Any]:
    state.add_bots(_string_list(request.json.get("visitors", []), "visitors"))
    return {"bots": len(state.bots)}


def _admin_key(state: SandboxState, request: _AdminRequest) -> dict[str, Any]:
    key = request.json.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    state.key = key
    return {"status": "ok"}


def _admin_reset(state: SandboxState, request: _AdminRequest) -> dict[str, Any]:
    state.reset()
    return {"status": "ok"}


_ADMIN_ROUTES: dict[str, dict[str, _AdminHandler]] = {
    "health": {"GET": lambda state, request: {"status": "ok"}},
    "events": {"GET": _admin_events},
    "stats": {"GET": lambda state, request: state.stats().to_dict()},
    "faults": {
        "GET": lambda state, request: {"faults": state.faults.to_dict()},
        "POST": _admin_set_faults,
        "DELETE": _admin_clear_faults,
    },
    "visitors": {"POST": _admin_visitors},
    "bots": {"POST": _admin_bots},
    "key": {"POST": _admin_key},
    "reset": {"POST": _admin_reset},
}


def _json_object(raw: bytes) -> Mapping[str, Any]:
    value = json.loads(raw) if raw.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("body must be a JSON object")
    return value


async def _handle_admin(
    state: SandboxState,
    methods: dict[str, _AdminHandler],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    handler = methods.get(scope["method"])
    if handler is None:
        await _send_method_not_allowed(send, methods)
        return
    raw = await _read_body(receive)
    try:
        payload = handler(state, _AdminRequest(_query(scope), _json_object(raw)))
    except ValueError as exc:
        await _send_error(send, 400, str(exc))
    else:
        await _send_json(send, 200, payload)


# --------------------------------------------------------------------------- ASGI plumbing


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header_map(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _query(scope: Scope) -> dict[str, str]:
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"))) if raw else {}


async def _send_json(send: Send, status: int, payload: Any, headers: Headers | None = None) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    start_headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send, status: int, message: str, retry_after: RetryAfter | None = None
) -> None:
    headers = [] if retry_after is None else [(b"retry-after", str(retry_after).encode())]
    payload = {"status": "error", "error": {"code": status, "message": message}}
    await _send_json(send, status, payload, headers)


async def _send_method_not_allowed(send: Send, methods: Iterable[str]) -> None:
    allow = ", ".join(sorted(methods)).encode()
    payload = {"status": "error", "error": {"code": 405, "message": "Method not allowed"}}
    await _send_json(send, 405, payload, [(b"allow", allow)])


def build_app(state: SandboxState) -> ASGIApp:
    """The sandbox as a plain ASGI 3 app (HTTP only) serving ``state``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == GOALS_PATH:
            if scope["method"] == "POST":
                await _handle_goal(state, scope, receive, send)
            else:
                await _send_method_not_allowed(send, ["POST"])
            return
        methods = _ADMIN_ROUTES.get(path.removeprefix(ADMIN_PREFIX).rstrip("/"))
        if path.startswith(ADMIN_PREFIX) and methods is not None:
            await _handle_admin(state, methods, scope, receive, send)
        else:
            await _send_error(send, 404, f"No route for {path}")

    return app


# --------------------------------------------------------------------------- running it


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP (inherited by accepted sockets) lets asyncio set TCP_NODELAY;
    # without it every keep-alive response stalls ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _server(state: SandboxState) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(state),
        lifespan="off",
        log_level="warning",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        backlog=_BACKLOG,
    )
    return uvicorn.Server(config)


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    state: SandboxState | None = None,
    *,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Serve the sandbox in the foreground until interrupted (Ctrl+C / SIGTERM).

    ``on_listening`` is called with the base URL once the port is bound.
    """
    sock = _bind(host, port)
    if on_listening is not None:
        on_listening(_base_url(sock))
    _server(state if state is not None else SandboxState()).run(sockets=[sock])


class Sandbox:
    """The sandbox served by uvicorn in a background thread; use it as a context manager.

    >>> with Sandbox() as sandbox:                      # doctest: +SKIP
    ...     sandbox.fail_next(503, count=2)
    ...     httpx.post(sandbox.url, json=..., headers={"Authorization": "Bearer df_sandbox"})
    """

    def __init__(
        self, state: SandboxState | None = None, *, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        self.state = state if state is not None else SandboxState()
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``; the admin endpoints live under ``/_sandbox/``."""
        if self._base_url is None:
            raise RuntimeError("the sandbox is not running")
        return self._base_url

    @property
    def url(self) -> str:
        """The goals endpoint, to use as DATAFAST_API_URL."""
        return self.base_url + GOALS_PATH

    def start(self, timeout: float = _STARTUP_TIMEOUT_SECONDS) -> Self:
        """Bind, start serving in a daemon thread and wait until requests are answered."""
        if self._thread is not None:
            raise RuntimeError("the sandbox is already running")
        sock = _bind(self.host, self.port)
        self.port, self._base_url = sock.getsockname()[1], _base_url(sock)
        server = self._server = _server(self.state)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="goalqueue-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Release hanging requests, shut the server down and wait for its thread."""
        if self._server is None or self._thread is None:
            return
        self.state.set_faults({"hang": False})
        self._server.should_exit = True
        self._thread.join(timeout=_GRACEFUL_SHUTDOWN_SECONDS + 5)
        self._server = self._thread = self._base_url = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # Conveniences over ``state`` for in-process callers.

    def events(self, status: int | None = None) -> list[RecordedEvent]:
        """Recorded requests in arrival order, optionally only those answered with ``status``."""
        return self.state.events(status)

    def stats(self) -> SandboxStats:
        """Counts by status, distinct accepted idempotency keys and duplicates."""
        return self.state.stats()

    def wait_for_events(
        self, count: int, *, status: int | None = None, timeout: float = 10.0
    ) -> list[RecordedEvent]:
        """Poll until at least ``count`` requests (of ``status``) are recorded; return them all.

        Raises TimeoutError if they do not arrive within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.state.count(status) < count:
            if time.monotonic() > deadline:
                got = self.state.count(status)
                raise TimeoutError(f"waited {timeout}s for {count} events, got {got}")
            time.sleep(0.005)
        return self.state.events(status)

    def set_faults(self, **changes: Any) -> Faults:
        """Partially update faults, e.g. ``set_faults(latency_ms=50, rate_limit=2)``."""
        return self.state.set_faults(changes)

    def fail_next(self, status: int, count: int = 1, retry_after: RetryAfter | None = None) -> None:
        """Answer the next ``count`` goal requests with ``status``."""
        fail_next = {"status": status, "count": count, "retry_after": retry_after}
        self.state.set_faults({"fail_next": fail_next})

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.state.clear_faults()

    def set_key(self, key: str) -> None:
        """Change the accepted API key at run time."""
        self.state.key = key

    def register_visitors(self, *visitors: str, mode: VisitorMode | None = None) -> None:
        """Mark visitors as having pageviews; optionally switch the visitor mode."""
        self.state.register_visitors(visitors, mode)

    def add_bots(self, *visitors: str) -> None:
        """Mark visitors as bots."""
        self.state.add_bots(visitors)

    def reset(self) -> None:
        """Forget recorded requests and clear faults."""
        self.state.reset()


# --------------------------------------------------------------------------- CLI


def _announce(key: str) -> Callable[[str], None]:
    def announce(base_url: str) -> None:
        url = base_url + GOALS_PATH
        click.echo(f"DataFast sandbox listening on {url}")
        click.echo("Point workers at it with:")
        click.echo(f"  DATAFAST_API_URL={url} DATAFAST_API_KEY={key}")
        click.echo(f"Admin endpoints: {base_url}{ADMIN_PREFIX}(events|stats|faults|visitors|...)")

    return announce


@click.command("sandbox")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0 picks a free one).",
)
@click.option("--key", default=DEFAULT_KEY, show_default=True, help="API key to accept.")
@click.option(
    "--latency-ms", default=0.0, type=click.FloatRange(min=0), help="Added latency per goal."
)
@click.option(
    "--error-rate", default=0.0, type=click.FloatRange(0, 1), help="Probability of a 503."
)
@click.option(
    "--registered-only", is_flag=True, help="Refuse (404) visitors not registered with --visitor."
)
@click.option("--bot", "bots", multiple=True, metavar="VISITOR", help="A bot visitor (400).")
@click.option("--visitor", "visitors", multiple=True, metavar="VISITOR", help="A known visitor.")
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=1),
    default=None,
    metavar="PER_SECOND",
    help="Answer 429 (Retry-After: 1) beyond this many goal requests a second.",
)
def sandbox_command(
    host: str,
    port: int,
    key: str,
    latency_ms: float,
    error_rate: float,
    registered_only: bool,
    bots: tuple[str, ...],
    visitors: tuple[str, ...],
    rate_limit: float | None,
) -> None:
    """Run a local stand-in for DataFast's goals API (POST /api/v1/goals)."""
    state = SandboxState(
        key=key,
        visitor_mode="registered" if registered_only else "any",
        visitors=set(visitors),
        bots=set(bots),
        faults=Faults(
            latency_ms=latency_ms,
            error_rate=error_rate,
            rate_limit=None if rate_limit is None else RateLimit(per_second=rate_limit),
        ),
    )
    try:
        serve(host, port, state, on_listening=_announce(key))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
