"""The import graph: what importing each goalqueue module pulls in, in a fresh interpreter.

A web app installs the core alone (redis, marshmallow, click), so the core modules (the top
level of ``goalqueue``, the CLI included) import nothing an extra installs. No goalqueue module,
the tools and the framework integrations included, imports ``workers`` or httpx. Found while
writing this: ``goalqueue.integrations.fastapi`` imports fastapi and starlette but not httpx;
of fastapi (0.165) and starlette (1.10) only ``starlette.testclient`` (``fastapi.testclient``)
imports httpx, and the integration does not use it (the ``fastapi`` extra's httpx is what that
TestClient needs). tests/test_install.py proves the core install itself, in a virtualenv of its own.

The static graph (every ``import`` in ``goalqueue`` and ``workers``, those inside functions and
those under ``TYPE_CHECKING`` too: a circle only a type checker sees is still a circle) has no
circles, and runs one way: ``workers`` and the tools
(the CLI, the sandbox, the demo, the integrations) import the core, never the reverse.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "goalqueue"

EXTRAS_PACKAGES = {
    # worker
    "celery", "kombu", "httpx", "httpx_aiohttp", "aiohttp", "packaging",
    # sandbox
    "starlette", "uvicorn",
    # demo
    "fakeredis",
    # metrics
    "prometheus_client",
    # flask, django, fastapi
    "flask", "django", "fastapi",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(path) for path in PACKAGE.rglob("*.py"))
# The top level of goalqueue and its CLI (a package, a module a subcommand)
CORE = sorted(
    module_name(path) for path in [*PACKAGE.glob("*.py"), *(PACKAGE / "cli").glob("*.py")]
)


def brought_in(modules: list[str]) -> dict[str, set[str]]:
    """Imports ``modules`` one after another in one fresh interpreter; for each, the top-level
    names its import added to ``sys.modules``. A name that none of them added is imported by
    none of them, so one interpreter answers for them all (and names the first culprit)."""
    code = textwrap.dedent(
        """
        import importlib, json, sys

        def top_level():
            return {name.partition(".")[0] for name in sys.modules}

        brought = {}
        for module in sys.argv[1:]:
            before = top_level()
            importlib.import_module(module)
            brought[module] = sorted(top_level() - before)
        print(json.dumps(brought))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return {module: set(names) for module, names in json.loads(result.stdout).items()}


def culprits(brought: dict[str, set[str]], forbidden: set[str]) -> dict[str, set[str]]:
    """The modules that brought in a forbidden name, and which."""
    return {module: names & forbidden for module, names in brought.items() if names & forbidden}


def test_the_modules_are_found() -> None:
    assert {"goalqueue", "goalqueue.cli", "goalqueue.producer"} <= set(CORE)
    assert {"goalqueue.sandbox", "goalqueue.demo.command", "goalqueue.integrations.fastapi"} <= (
        set(MODULES) - set(CORE)
    )


@pytest.mark.integration
def test_the_core_imports_nothing_an_extra_installs() -> None:
    # Given a fresh interpreter, when it imports goalqueue and each core module (the CLI too)
    brought = brought_in(CORE)
    # Then none of them loads the worker package or a package of an extra
    assert culprits(brought, {"workers"} | EXTRAS_PACKAGES) == {}
    assert set(brought) == set(CORE)


@pytest.mark.integration
def test_no_module_imports_workers_or_httpx() -> None:
    # Given a fresh interpreter, when it imports every goalqueue module (the sandbox, the demo
    # and the framework integrations too)
    brought = brought_in(MODULES)
    # Then none of them loads the worker package or httpx
    assert culprits(brought, {"workers", "httpx"}) == {}
    # And the FastAPI integration did load fastapi (so this looked at the real thing)
    assert "fastapi" in brought["goalqueue.integrations.fastapi"]


SOURCES = {
    module_name(path): path
    for top in ("goalqueue", "workers")
    for path in (ROOT / top).rglob("*.py")
}
TOOLS = ("goalqueue.cli", "goalqueue.demo", "goalqueue.sandbox", "goalqueue.integrations")


def owner(name: str) -> str | None:
    """The goalqueue or workers module that importing ``name`` runs, or None for others."""
    while name and name not in SOURCES:
        name = name.rpartition(".")[0]
    return name or None


def imported(module: str) -> set[str]:
    """The goalqueue and workers modules that ``module`` imports: at its top, in a function or
    for type checking only."""
    tree = ast.parse(SOURCES[module].read_text())
    package = module if SOURCES[module].name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            above = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            base = ".".join(filter(None, [above, node.module or ""]))
            names += [f"{base}.{alias.name}" for alias in node.names]
    return {found for name in names if (found := owner(name)) not in (None, module)}


def layer(module: str) -> int:
    """0 for the core, 1 for workers, 2 for the tools: a module imports only lower layers'."""
    if module.startswith("workers"):
        return 1
    return 2 if module.startswith(TOOLS) else 0


GRAPH = {module: imported(module) for module in SOURCES}


def test_the_static_graph_is_read() -> None:
    assert GRAPH["goalqueue.producer"] >= {"goalqueue.config", "goalqueue.scripts"}
    assert "workers.node" in GRAPH["goalqueue.cli.worker"]  # an import in a function counts
    assert "goalqueue.testing" in GRAPH["goalqueue.testing.pytest_plugin"]  # TYPE_CHECKING too
    assert "goalqueue.sandbox.answers" in GRAPH["goalqueue.sandbox.faults"]  # relative or not


def test_the_import_graph_has_no_circles() -> None:
    # Given every import between goalqueue and workers modules, When it is walked depth first
    circles, done, path = [], set(), []

    def visit(module: str) -> None:
        path.append(module)
        for target in sorted(GRAPH[module]):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        if module not in done:
            visit(module)
    # Then no path leads back to where it started
    assert circles == []


def test_the_import_graph_runs_one_way() -> None:
    # Given the static graph
    edges = {(module, target) for module, targets in GRAPH.items() for target in targets}
    # Then no module imports one of a higher layer
    assert {(module, target) for module, target in edges if layer(target) > layer(module)} == set()
    # And of goalqueue, only the CLI reaches into workers, from the subcommand that runs them
    reaching = {module for module, target in edges if layer(module) != 1 and layer(target) == 1}
    assert reaching == {"goalqueue.cli.worker"}
