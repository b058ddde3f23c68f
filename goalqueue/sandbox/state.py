"""What the sandbox knows: its configuration, its faults and every goal request it received."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from goalqueue.sandbox.faults import Faults, parse_fault_changes

DEFAULT_KEY = "df_sandbox"

VisitorMode = Literal["any", "registered"]


@dataclass(frozen=True)
class RecordedEvent:
    """One goal request as the sandbox received and answered it.

    ``body`` is the parsed JSON (or the raw text when it was not JSON, None when empty);
    ``event_id`` is set only for goals DataFast took (a 200 from in front of it, under the
    ``odd_answer`` fault, has none).
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
    """Counts over the recorded requests, and the goal requests still being answered.

    ``accepted`` counts goals taken (given an event id); ``duplicates`` counts extra
    acceptances of an ``Idempotency-Key`` already accepted: a key accepted three times adds 2.
    ``in_flight`` counts goal requests received and not yet answered (held by latency or a
    hang, or just being judged): a client killed now loses those answers, so it is the floor of
    the duplicates that no client can avoid.
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

    The app reads it from the server thread; tests may change it from theirs.
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
    _accepted: int = field(default=0, init=False, repr=False)
    _in_flight: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @contextmanager
    def answering(self) -> Iterator[Callable[[], None]]:
        """Count one goal request in flight until the block calls what it yields (once its
        answer is ready to go), or ends."""
        with self._lock:
            self._in_flight += 1
        counted = True

        def answered() -> None:
            nonlocal counted
            with self._lock:
                if counted:
                    self._in_flight -= 1
                    counted = False

        try:
            yield answered
        finally:
            answered()

    @property
    def in_flight(self) -> int:
        """Goal requests received and not yet answered."""
        with self._lock:
            return self._in_flight

    def record(self, event: RecordedEvent) -> None:
        """Remember one answered request and update the counters."""
        with self._lock:
            self._events.append(event)
            self._by_status[event.status] += 1
            if event.event_id is not None:
                self._accepted += 1
                if event.idempotency_key is not None:
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
            accepted = self._accepted
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
        """Forget recorded requests and clear faults; key, visitors and bots stay.

        Requests in flight stay counted until they are answered.
        """
        with self._lock:
            self._events.clear()
            self._by_status.clear()
            self._accepted_keys.clear()
            self._accepted = 0
        self.clear_faults()
