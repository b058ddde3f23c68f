"""The import graph: what importing each goalqueue module pulls in, in a fresh interpreter.

A web app installs the core alone (redis, marshmallow, click), so the core modules (the top
level of ``goalqueue``, the CLI included) import nothing an extra installs. No goalqueue module,
the tools and the framework integrations included, imports ``workers`` or httpx. Found while
writing this: ``goalqueue.integrations.fastapi`` imports fastapi and starlette but not httpx;
of fastapi (0.165) and starlette (1.10) only ``starlette.testclient`` (``fastapi.testclient``)
imports httpx, and the integration does not use it (the ``fastapi`` extra's httpx is what that
TestClient needs). tests/test_install.py proves the core install itself, in a virtualenv of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "goalqueue"

EXTRAS_PACKAGES = {
    # worker
    "celery", "kombu", "httpx", "httpx_aiohttp", "aiohttp", "packaging",
    # sandbox
    "starlette", "uvicorn",
    # demo
    "fakeredis",
    # flask, django, fastapi
    "flask", "django", "fastapi",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(path) for path in PACKAGE.rglob("*.py"))
CORE = sorted(module_name(path) for path in PACKAGE.glob("*.py"))


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
