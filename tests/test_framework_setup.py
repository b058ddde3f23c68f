"""Each framework checks goalqueue's settings when it starts, the framework's way, and reports a
bad one in the one line the ``goalqueue`` commands print: Django's system checks
(``manage.py check``) and a server that does not boot (gunicorn, uvicorn)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.ports import free_port
from tests.helpers.webservers import ROOT, SERVERS

pytestmark = pytest.mark.integration

BAD_URL = "redis//oops"
ONE_LINE = "GOALQUEUE_BROKER_URL must look like redis://host:6379/0"


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GOALQUEUE_")}
    return subprocess.run(
        command, cwd=ROOT, env={**environment, **env}, capture_output=True, text=True, timeout=60
    )


def django(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "django", *args, "--settings", "tests.webapps.django_settings"],
        **env,
    )


def test_manage_py_check_reports_a_bad_setting_as_one_system_check_error() -> None:
    done = django("check", GOALQUEUE_BROKER_URL=BAD_URL)
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if "goalqueue.E001" in line]
    assert ONE_LINE in line
    assert "Traceback" not in done.stderr


def test_manage_py_check_warns_when_no_spool_is_set() -> None:
    done = django("check")
    assert done.returncode == 0
    assert "goalqueue.W001" in done.stderr and "GOALQUEUE_SPOOL_DIR is not set" in done.stderr


def test_manage_py_check_passes_with_a_spool(tmp_path: Path) -> None:
    done = django("check", WEBAPP_SPOOL_DIR=str(tmp_path / "spool"))
    assert done.returncode == 0, done.stderr
    assert "goalqueue" not in done.stdout + done.stderr


def test_the_goalqueue_dict_wins_over_the_environment() -> None:
    code = (
        "import django; django.setup(); from goalqueue.producer import default_queue; "
        "print(default_queue().settings.namespace)"
    )
    done = run(
        [sys.executable, "-c", code],
        DJANGO_SETTINGS_MODULE="tests.webapps.django_settings",
        WEBAPP_NAMESPACE="from-the-dict",
        GOALQUEUE_NAMESPACE="from-the-environment",
    )
    assert done.stdout.strip() == "from-the-dict", done.stderr


@pytest.mark.parametrize("kind", ["django-sync", "flask-preload", "fastapi-uvicorn"])
def test_a_server_with_a_bad_setting_does_not_boot(kind: str) -> None:
    # Given an app whose goalqueue setting is broken
    port = free_port()
    bind = ["--port", str(port)] if kind.startswith("fastapi") else ["--bind", f"127.0.0.1:{port}"]
    # When its server starts
    done = run([sys.executable, "-m", *SERVERS[kind], *bind], GOALQUEUE_BROKER_URL=BAD_URL)
    # Then it exits at boot, naming the setting in the line goalqueue's commands print
    assert done.returncode != 0
    assert ONE_LINE in done.stderr, done.stderr[-2000:]
