"""Text for a terminal: untrusted values made printable, and aligned columns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
# A cell is cut to this many characters, so one long error cannot push the others off the screen.
CELL_MAX = 60


def printable(value: object) -> str:
    """``value`` as text with terminal control characters escaped: event data is untrusted."""
    return str(value).translate(_CONTROL)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a table, headers first: a column of numbers is aligned right, any other
    left; ``None`` shows as ``-``, and a cell is cut to ``CELL_MAX`` characters."""
    values = [list(row) for row in rows]
    right = [any(_is_number(row[i]) for row in values) for i in range(len(headers))]
    cells = [list(headers), *([_cell(value)[:CELL_MAX] for value in row] for row in values)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(
            cell.rjust(width) if aligned_right else cell.ljust(width)
            for cell, width, aligned_right in zip(row, widths, right, strict=True)
        ).rstrip()
        for row in cells
    ]


def figures(values: Mapping[str, object]) -> list[str]:
    """One ``name  value`` line each, names aligned right; ``None`` shows as ``-``."""
    return [f"{name:>20}  {_cell(value)}" for name, value in values.items()]


def _cell(value: object) -> str:
    return printable("-" if value is None else value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
