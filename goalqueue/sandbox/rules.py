"""DataFast's rules for a goal request: the key, the body's fields and the visitor."""

from __future__ import annotations

import re
from typing import Any

from goalqueue.sandbox.answers import Refusal
from goalqueue.sandbox.state import SandboxState

_NAME_RE = re.compile(r"[a-z0-9_:-]{1,64}")
_METADATA_KEY_RE = re.compile(r"[a-z0-9_-]{1,64}")
_METADATA_MAX_KEYS = 10
_METADATA_MAX_VALUE = 255
_RESERVED_NAMES = frozenset({"identify"})


def check_auth(state: SandboxState, authorization: str | None, website_id: str | None) -> None:
    """Bearer key must match; ``dft_`` account tokens also need ``?websiteId=``."""
    if not authorization:
        raise Refusal(401, "Missing API key")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or token.strip() != state.key:
        raise Refusal(401, "Invalid API key")
    if state.key.startswith("dft_") and not website_id:
        raise Refusal(400, "websiteId query parameter is required with an account token")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise Refusal(400, "metadata must be an object")
    if len(metadata) > _METADATA_MAX_KEYS:
        raise Refusal(400, f"metadata may have at most {_METADATA_MAX_KEYS} keys")
    for key, value in metadata.items():
        if not _METADATA_KEY_RE.fullmatch(key):
            raise Refusal(400, f"invalid metadata key: {key!r}")
        if not isinstance(value, str) or len(value) > _METADATA_MAX_VALUE:
            raise Refusal(400, f"metadata value for {key!r} must be a string of at most 255")


def check_goal(body: Any) -> str:
    """Validate a goal body like DataFast does; return the visitor id."""
    if not isinstance(body, dict):
        raise Refusal(400, "Request body must be a JSON object")
    visitor = body.get("datafast_visitor_id", body.get("visitorId"))
    if not isinstance(visitor, str) or not visitor:
        raise Refusal(400, "datafast_visitor_id is required")
    name = body.get("name")
    if not isinstance(name, str):
        raise Refusal(400, "name is required")
    name = name.lower().replace(" ", "_")
    if not _NAME_RE.fullmatch(name):
        raise Refusal(400, "name must be 1-64 characters of a-z 0-9 _ - :")
    if name in _RESERVED_NAMES:
        raise Refusal(400, f"'{name}' is a reserved goal name")
    _check_metadata(body.get("metadata"))
    if not isinstance(body.get("description", ""), str | None):
        raise Refusal(400, "description must be a string")
    return visitor


def check_visitor(state: SandboxState, visitor: str) -> None:
    """Bots are refused with 400; in registered mode, visitors without pageviews with 404."""
    if visitor in state.bots:
        raise Refusal(400, "The visitor is a bot")
    if state.visitor_mode == "registered" and visitor not in state.visitors:
        raise Refusal(404, "Visitor has no pageviews on this website")
