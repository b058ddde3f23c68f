"""The code base stays lint-clean, formatted and strictly typed: CI runs the same tools as a
developer would, from this interpreter's environment, and shows their output when they object."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECKS = {
    "ruff check": ["-m", "ruff", "check", "."],
    "ruff format": ["-m", "ruff", "format", "--check", "."],
    # strict comes from pyproject's [tool.mypy]; --strict here says so even if it were dropped
    "mypy": ["-m", "mypy", "--strict", "goalqueue", "workers"],
}


@pytest.mark.parametrize("tool", list(CHECKS))
def test_the_code_passes(tool: str) -> None:
    # Given the source tree, When the tool runs over it
    done = subprocess.run(
        [sys.executable, *CHECKS[tool]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Then it finds nothing to object to
    assert done.returncode == 0, f"{tool} objects:\n{done.stdout}{done.stderr}"
