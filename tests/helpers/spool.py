"""The producer's spool, read behind its back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from goalqueue.spool import Spool


def spooled_rows(directory: Path) -> list[tuple[str, str]]:
    """(event id, payload) of every goal in the spool, file by file, read behind its back."""
    rows: list[tuple[str, str]] = []
    for path in Spool(directory).files():
        db = sqlite3.connect(path)
        try:
            rows += db.execute("SELECT event_id, payload FROM goals ORDER BY seq")
        finally:
            db.close()
    return rows
