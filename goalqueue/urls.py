"""URLs as they may be shown in an error or a log line: without their passwords."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str) -> str:
    """The URL without its password, for error messages (each part of a ``;``-separated list
    of sentinel URLs)."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        return _redact_text(url)
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


def _redact_text(url: str) -> str:
    """Whatever sits between ``//`` and ``@`` hidden, for URLs too broken to parse."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, slashes, _ = head.partition("//")
    return f"{scheme}{slashes}***@{tail}"
