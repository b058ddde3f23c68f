"""The core install, for real: a fresh virtualenv, ``pip install`` of the source tree with no
extra, then what a web app and an operator do with it.

The source tree is copied first (what .dockerignore admits, the files the image is built
from), so setuptools' in-tree ``build/`` never lands in the work tree and a stale one cannot
leak into the wheel. pip resolves the core's dependencies from the package index; the test
skips only when the install fails and PyPI does not answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import goalqueue

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple/"

# The top-level modules of the packages the extras install (celery brings kombu, httpx-aiohttp
# brings aiohttp): none may be loaded on the enqueue path.
EXTRAS_MODULES = ("celery", "kombu", "httpx", "aiohttp", "uvicorn", "starlette")

ENQUEUE = """
import json, sys
import goalqueue

queue = goalqueue.GoalQueue(broker_url=sys.argv[1])
event_id = queue.track_goal("visitor-1", "signup", metadata={"plan": "pro"})
print(json.dumps({
    "event_id": event_id,
    "file": goalqueue.__file__,
    "loaded": sorted(m for m in sys.argv[2:] if m in sys.modules),
}))
"""


def source_copy(destination: Path) -> Path:
    """The files .dockerignore admits, copied to ``destination``."""
    admitted = [
        line.strip().removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    ]
    destination.mkdir()
    for name in admitted:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source, destination / name)
    return destination


def pypi_unreachable() -> str | None:
    """Why PyPI does not answer, or None when it does."""
    try:
        with urllib.request.urlopen(PYPI + "redis/", timeout=15):
            return None
    except OSError as exc:
        return str(exc)


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding goalqueue with no extra (a regular, non-editable install)."""
    base = tmp_path_factory.mktemp("core-install")
    source = source_copy(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    # The project's pip installs into the new virtualenv (--python): no pip of its own to set up
    install = subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
            "--disable-pip-version-check", "-q", str(source),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    if install.returncode != 0:
        reason = pypi_unreachable()
        if reason is not None:
            pytest.skip(f"the core install needs PyPI, which does not answer: {reason}")
        pytest.fail(f"pip install of the core failed:\n{install.stdout}\n{install.stderr}")
    return venv


def core_env(broker_url: str) -> dict[str, str]:
    """This environment without goalqueue's settings or a PYTHONPATH, pointed at the broker."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GOALQUEUE_", "DATAFAST_")) and k != "PYTHONPATH"
    }
    return {**env, "GOALQUEUE_BROKER_URL": broker_url}


def run(
    venv: Path, program: str, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A program of the core virtualenv, run outside the source tree."""
    return subprocess.run(
        [str(venv / "bin" / program), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=venv.parent,
        timeout=60,
    )


pytestmark = pytest.mark.timeout(300)


def test_a_web_app_enqueues_with_the_core_alone(core_venv: Path, redis_url: str) -> None:
    env = core_env(redis_url)
    # Given the core install, when a web app enqueues a goal
    result = run(core_venv, "python", "-c", ENQUEUE, redis_url, *EXTRAS_MODULES, env=env)
    assert result.returncode == 0, result.stderr
    enqueued = json.loads(result.stdout)
    # Then the installed package did it (the Lua scripts shipped), not the source tree
    assert Path(enqueued["file"]).is_relative_to(core_venv)
    # And nothing an extra installs was loaded on the way
    assert enqueued["loaded"] == []
    # And the core's CLI sees the goal queued
    stats = run(core_venv, "goalqueue", "stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["queued"] == 1


def test_the_core_cli_runs_and_names_the_extra_a_command_needs(
    core_venv: Path, redis_url: str, tmp_path: Path
) -> None:
    env = core_env(redis_url)
    # The packages of the extras are not installed
    find = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    installed = run(core_venv, "python", "-c", find, *EXTRAS_MODULES, env=env)
    assert installed.stdout.strip() == "[]", installed.stderr
    # goalqueue --help lists every command
    helped = run(core_venv, "goalqueue", "--help", env=env)
    assert helped.returncode == 0, helped.stderr
    for command in ("send", "stats", "dead", "spool", "worker", "sandbox", "demo"):
        assert f"  {command} " in helped.stdout
    # The operator's commands run
    for args in (
        ("send", "visitor-2", "signup"),
        ("dead", "list", "--json"),
        ("spool", "status", "--json", "--dir", str(tmp_path / "spool")),
    ):
        ran = run(core_venv, "goalqueue", *args, env=env)
        assert ran.returncode == 0, (args, ran.stderr)
    # goalqueue worker exits 1 with one line naming the worker extra
    worker = run(core_venv, "goalqueue", "worker", env=env)
    assert worker.returncode == 1
    assert worker.stdout == ""
    (line,) = worker.stderr.splitlines()
    assert "pip install 'goalqueue[worker]'" in line


@pytest.mark.integration  # runs mypy as a process
def test_a_typed_app_using_every_public_name_passes_mypy_strict(
    core_venv: Path, tmp_path: Path
) -> None:
    # Given an app module that uses every name goalqueue exports (and its testing kit), outside
    # the source tree (mypy would find the package there)
    source = (ROOT / "tests" / "typing" / "user_app.py").read_text()
    assert [name for name in goalqueue.__all__ if f"goalqueue.{name}" not in source] == []
    module = tmp_path / "user_app.py"
    module.write_text(source)
    # When mypy --strict checks it against the installed package
    checked = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--python-executable", str(core_venv / "bin" / "python"), str(module),
        ],
        capture_output=True,
        text=True,
        cwd=core_venv.parent,
        env=core_env("redis://127.0.0.1:1/0"),
        timeout=240,
    )  # fmt: skip
    # Then it finds the package's types (py.typed) and nothing to object to
    assert checked.returncode == 0, checked.stdout + checked.stderr
