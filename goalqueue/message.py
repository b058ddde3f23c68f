"""The Celery task message for one goal, written straight into kombu's Redis queue.

The producer does not go through ``apply_async``: it writes the message, its ledger entry and
the next sequence number in one Lua call, so a goal is either fully enqueued or not at all, in
one round trip. The message is a protocol-2 Celery task message in the envelope kombu's Redis
transport stores, cut to what a worker reads:

* the task id is the goal's event id, so Flower shows one row per goal;
* the only argument is ``seq``: the goal itself stays in the ledger, so the message holds no
  personal data and no secret, and the queue stays small; the task reads its event id from its
  own task id rather than from a second copy in the arguments (41 bytes less per queued goal);
* the delivery tag is the sequence number, unique for every enqueue;
* no ``content-encoding``: kombu reads a missing one as utf-8, and every queued goal is 27 bytes
  smaller for it.

A template has three ``string.format`` slots for the Lua side: sequence, event id, sequence.

A sequence is a whole number from 1 to ``<ns>:seq`` (the last handed out), never above
:data:`MAX_SEQUENCE`: Lua's numbers are doubles, exact up to 2**53. A message with any other
(written by a bug, a stray client or a bad migration) is poison: the worker dead-letters it, and
TAKE lets it move no shared state (see ``lua/take.lua``).
"""

from __future__ import annotations

import json
from functools import cache
from typing import TypeGuard

from goalqueue.keys import TASK_NAME, Keys

MAX_SEQUENCE = 2**53


@cache
def template(keys: Keys) -> str:
    """The message template for the queue of ``keys``' namespace."""
    envelope = {
        "body": "[[%d],{},{}]",
        "content-type": "application/json",
        "headers": {"id": "%s", "task": TASK_NAME},
        "properties": {
            "delivery_tag": "%d",
            "delivery_info": {"exchange": "", "routing_key": keys.queue},
        },
    }
    return json.dumps(envelope, separators=(",", ":"))


def read(raw: str | bytes) -> tuple[str, int]:
    """A queued task message's event id (its task id) and sequence (its one argument); raises
    ``ValueError``, ``KeyError`` or ``TypeError`` for anything not shaped like one."""
    message = json.loads(raw)
    (seq,) = json.loads(message["body"])[0]
    return message["headers"]["id"], int(seq)


def is_sequence(value: object) -> TypeGuard[int]:
    """Whether ``value`` can be a goal's sequence: a whole number from 1 to ``MAX_SEQUENCE``
    (TAKE checks it against the last one handed out)."""
    return type(value) is int and 1 <= value <= MAX_SEQUENCE
