"""``goalqueue.__all__`` is the public API: what the README and the examples use, and no more."""

from __future__ import annotations

import ast
import importlib.util
import re
import types
from pathlib import Path

import goalqueue
from goalqueue.keys import TASK_NAME

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def is_submodule(name: str) -> bool:
    return importlib.util.find_spec(f"goalqueue.{name}") is not None


def names_used_by_users() -> set[str]:
    """Every ``goalqueue.NAME`` in the README, the docs and the examples, and every name they
    import with ``from goalqueue import ...``; submodules, file names (``deploy/grafana/
    goalqueue.json``), Django system check ids (``goalqueue.E001``) and the task's name left
    out."""
    used: set[str] = set()
    for path in [*DOCUMENTS, *EXAMPLES]:
        used |= set(re.findall(r"(?<![/\w])goalqueue\.([A-Za-z_]\w*)", path.read_text()))
    for path in EXAMPLES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "goalqueue":
                used |= {alias.name for alias in node.names}
    return {
        name
        for name in used
        if not is_submodule(name)
        and f"goalqueue.{name}" != TASK_NAME
        and not re.fullmatch(r"[EW]\d{3}", name)
    }


def test_every_name_in_all_is_importable_once_and_public() -> None:
    assert len(goalqueue.__all__) == len(set(goalqueue.__all__))
    assert [name for name in goalqueue.__all__ if name.startswith("_")] == []
    for name in goalqueue.__all__:
        assert getattr(goalqueue, name, None) is not None, name


def test_what_the_readme_and_examples_use_is_in_all() -> None:
    used = names_used_by_users()
    # (the check reads something: the README's first lines call goalqueue.track_goal)
    assert "track_goal" in used
    assert used - set(goalqueue.__all__) == set()


def test_nothing_public_in_the_package_namespace_is_left_out_of_all() -> None:
    public = {
        name
        for name, value in vars(goalqueue).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    # (`from __future__ import annotations` would leave its feature flag behind)
    assert public - {"annotations"} == set(goalqueue.__all__)
