"""DataFast's rules for a goal request: the key, the body's fields and the visitor.

The field rules are ``goalqueue.schema``'s constants, so the sandbox refuses exactly what
``track_goal`` refuses. It sees the goal as sent: metadata values arrive as the strings the
producer turned numbers and booleans into, so any other type is refused here.
"""

from __future__ import annotations

from typing import Any

from goalqueue.sandbox.answers import Refusal
from goalqueue.sandbox.state import SandboxState
from goalqueue.schema import (
    DESCRIPTION_MAX,
    METADATA_KEY_PATTERN,
    METADATA_MAX_KEYS,
    METADATA_VALUE_MAX,
    NAME_PATTERN,
    RESERVED_NAMES,
    VISITOR_PATTERN,
    is_utf8,
)


def check_auth(state: SandboxState, authorization: str | None, website_id: str | None) -> None:
    """Bearer key must match; ``dft_`` account tokens also need ``?websiteId=``."""
    if not authorization:
        raise Refusal(401, "Missing API key")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or token.strip() != state.key:
        raise Refusal(401, "Invalid API key")
    if state.key.startswith("dft_") and not website_id:
        raise Refusal(400, "websiteId query parameter is required with an account token")


def _is_text(value: Any, most: int) -> bool:
    return isinstance(value, str) and len(value) <= most and is_utf8(value)


def _check_visitor_id(body: dict[str, Any]) -> str:
    visitor = body.get("datafast_visitor_id", body.get("visitorId"))
    if not isinstance(visitor, str) or not visitor:
        raise Refusal(400, "datafast_visitor_id is required")
    if not VISITOR_PATTERN.fullmatch(visitor):
        raise Refusal(
            400, "datafast_visitor_id must be 1-128 characters, no whitespace or control characters"
        )
    return visitor


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise Refusal(400, "name is required")
    name = name.lower().replace(" ", "_")
    if not NAME_PATTERN.fullmatch(name):
        raise Refusal(400, "name must be 1-64 characters of a-z 0-9 _ - :")
    if name in RESERVED_NAMES:
        raise Refusal(400, f"'{name}' is a reserved goal name")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise Refusal(400, "metadata must be an object")
    if len(metadata) > METADATA_MAX_KEYS:
        raise Refusal(400, f"metadata may have at most {METADATA_MAX_KEYS} keys")
    for key, value in metadata.items():
        if not METADATA_KEY_PATTERN.fullmatch(key):
            raise Refusal(400, f"invalid metadata key: {key!r}")
        if not _is_text(value, METADATA_VALUE_MAX):
            why = f"must be valid text of at most {METADATA_VALUE_MAX} characters"
            raise Refusal(400, f"metadata value for {key!r} {why}")


def _check_description(description: Any) -> None:
    if description is not None and not _is_text(description, DESCRIPTION_MAX):
        why = f"must be valid text of at most {DESCRIPTION_MAX} characters"
        raise Refusal(400, f"description {why}")


def check_goal(body: Any) -> str:
    """Validate a goal body like DataFast does; return the visitor id."""
    if not isinstance(body, dict):
        raise Refusal(400, "Request body must be a JSON object")
    visitor = _check_visitor_id(body)
    _check_name(body.get("name"))
    _check_metadata(body.get("metadata"))
    _check_description(body.get("description"))
    return visitor


def check_visitor(state: SandboxState, visitor: str) -> None:
    """Bots are refused with 400; in registered mode, visitors without pageviews with 404."""
    if visitor in state.bots:
        raise Refusal(400, "The visitor is a bot")
    if state.visitor_mode == "registered" and visitor not in state.visitors:
        raise Refusal(404, "Visitor has no pageviews on this website")
