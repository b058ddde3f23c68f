"""The code base stays lint-clean, formatted and strictly typed: CI runs the same tools as a
developer would, from this interpreter's environment, and shows their output when they object.
And the library keeps its shape: short functions, no module over about 400 lines."""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted(path for top in ("goalqueue", "workers") for path in (ROOT / top).rglob("*.py"))
MODULE_MAX_LINES = 400
FUNCTION_MEDIAN_MAX_LINES = 10

CHECKS = {
    "ruff check": ["-m", "ruff", "check", "."],
    "ruff format": ["-m", "ruff", "format", "--check", "."],
    # strict comes from pyproject's [tool.mypy]; --strict here says so even if it were dropped
    "mypy": ["-m", "mypy", "--strict", "goalqueue", "workers"],
}


@pytest.mark.integration  # runs ruff and mypy as processes
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


def test_no_library_module_is_over_400_lines() -> None:
    # Given every module of goalqueue and workers, Then none is longer than the limit
    lengths = {path.relative_to(ROOT): len(path.read_text().splitlines()) for path in LIBRARY}
    assert {path: n for path, n in lengths.items() if n > MODULE_MAX_LINES} == {}


def test_the_median_function_is_short() -> None:
    # Given every function and method of goalqueue and workers, docstrings included
    lengths = [
        node.end_lineno - node.lineno + 1
        for path in LIBRARY
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno
    ]
    # Then half of them are under ten lines
    assert len(lengths) > 300
    assert statistics.median(lengths) < FUNCTION_MEDIAN_MAX_LINES
