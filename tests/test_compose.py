"""docker-compose.yml, Dockerfile, .dockerignore and .env.example, held to the code.

Docker cannot run on the development machines, so these tests check the deployment files with
what can run here:

* Compose itself (``docker-compose config``, Debian's package, which needs no daemon) renders
  the file for a filled-in ``.env``: the tests read each service's command and environment as
  Compose would run them, and Compose refuses while a required secret is empty;
* the compose file's promises: Redis durable (AOF, fsync every second, no eviction) and
  password-protected on a named volume; workers scalable and health-checked; Flower behind
  basic auth; the sandbox only in the ``dev`` profile;
* every command the files run is a real entry point of this project (run here with ``--help``);
* every variable the compose file names is read by goalqueue or on a short, justified
  allow-list, and ``.env.example`` documents each one without carrying any secret;
* with a local ``redis-server``: the Redis options really take, the worker's healthcheck
  answers for a running worker, and Flower really reads ``FLOWER_BASIC_AUTH``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from goalqueue.config import ENV_NAMES, Settings
from goalqueue.errors import ConfigError
from tests.helpers.ports import free_port
from tests.helpers.redis_server import RedisServer
from workers.node import default_processes

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: add pyyaml to the test extras")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
"""The virtualenv's scripts (``goalqueue``, ``celery``): what ``pip install .`` puts on PATH."""

CODE_VARIABLES = frozenset(ENV_NAMES.values())

ALLOWED_VARIABLES: dict[str, str] = {
    "REDIS_PASSWORD": "compose-only: interpolated into Redis's --requirepass and the broker URLs",
    "REDISCLI_AUTH": "read by redis-cli in the redis healthcheck; keeps the password off argv",
    "FLOWER_BASIC_AUTH": "read by Flower itself (it maps FLOWER_* variables onto its options)",
    "METRICS_PASSWORD": "compose-only: the monitoring profile's exporter login and the secret "
    "Prometheus reads it from",
}
"""Variables the compose file may name although goalqueue's code does not read them."""

REQUIRED_SECRETS = ("REDIS_PASSWORD", "DATAFAST_API_KEY", "FLOWER_BASIC_AUTH")
SECRET_WORDS = re.compile(r"KEY|PASSWORD|SECRET|TOKEN", re.IGNORECASE)
FILL = {
    "REDIS_PASSWORD": "redis-test-password",
    "DATAFAST_API_KEY": "df_test",
    "FLOWER_BASIC_AUTH": "admin:flower-test-password",
}
"""Values for the required secrets, standing in for a filled-in ``.env``."""

HELP_ENV = {"DATAFAST_API_KEY": "df_test", "GOALQUEUE_BROKER_URL": "redis://127.0.0.1:9/15"}
START_TIMEOUT = 20.0

# --------------------------------------------------------------------------- compose

_NAMED = re.compile(r"(?<!\$)\$\{?([A-Za-z_][A-Za-z0-9_]*)")
"""A ``$NAME`` or ``${NAME...}`` that Compose interpolates (``$$NAME`` is the container's own)."""


def docker_compose() -> str:
    """The ``docker-compose`` program: CI installs it (.ci/run); elsewhere its tests skip."""
    program = shutil.which("docker-compose")
    if program is None:
        message = "docker-compose is not installed: apt-get install docker-compose"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return program


def compose_config(
    env_file: Path, shell: Mapping[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` for this ``.env`` and these shell variables (nothing else of
    this process's environment, so a variable set here cannot leak in)."""
    command = [docker_compose(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    env = {"PATH": os.environ["PATH"], **(shell or {})}
    return subprocess.run(
        [*command, "config", *args], env=env, capture_output=True, text=True, timeout=60
    )


def rendered(env_file: Path, shell: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose renders it for this ``.env`` and these shell variables."""
    result = compose_config(env_file, shell)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


def interpolated_names(node: Any) -> set[str]:
    """Every variable the strings of ``node`` interpolate."""
    if isinstance(node, str):
        return set(_NAMED.findall(node.replace("$$", "")))
    if isinstance(node, list):
        return set().union(*(interpolated_names(item) for item in node))
    if isinstance(node, dict):
        return set().union(*(interpolated_names(value) for value in node.values()))
    return set()


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment:``, in either the mapping or the ``KEY=VALUE`` list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def container_shell(command: str) -> str:
    """A rendered CMD-SHELL line as the container's shell gets it: Compose prints ``$`` as
    ``$$``."""
    return command.replace("$$", "$")


def seconds(duration: str) -> float:
    """A compose duration such as ``30s``, ``1m30s`` or ``1h``, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def read_env_example() -> tuple[set[str], dict[str, str]]:
    """(every variable named in a ``KEY=`` line, commented or not; the uncommented values)."""
    documented: set[str] = set()
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            documented.add(match[2])
            if not match[1]:
                values[match[2]] = match[3]
    return documented, values


def write_env(directory: Path, **overrides: str) -> Path:
    """A ``.env``: ``.env.example`` with the required secrets filled in, then ``overrides``."""
    values = {**read_env_example()[1], **FILL, **overrides}
    path = directory / ".env"
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    return path


def dev_profile_env() -> dict[str, str]:
    """The variables the compose file's header tells a developer to set for the dev profile."""
    header = COMPOSE_FILE.read_text().split("\nservices:", 1)[0]
    command = header.split("--profile dev", 1)[0].rsplit("Dev run", 1)[1]
    return dict(re.findall(r"^#\s+([A-Z][A-Z0-9_]*)=(\S+)", command, re.MULTILINE))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as written (for what it names, before Compose fills anything in)."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def filled_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_env(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def filled(filled_env: Path) -> dict[str, Any]:
    """The compose file as ``docker-compose config`` prints it for a filled-in ``.env``."""
    return rendered(filled_env)


@pytest.fixture(scope="module")
def services(filled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = filled["services"]
    return result


def option_pairs(args: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a command line (after the program name)."""
    return {
        name.removeprefix("--"): value for name, value in zip(args[1::2], args[2::2], strict=False)
    }


# --------------------------------------------------------------------------- redis


@pytest.mark.integration
def test_redis_is_durable_password_protected_and_on_a_named_volume(
    filled: dict[str, Any],
) -> None:
    # Given the redis service as Compose renders it
    redis_service = filled["services"]["redis"]
    command = argv(redis_service["command"])

    # Then it is Redis 7 with AOF fsynced every second, no eviction and the .env password
    assert redis_service["image"].split(":")[:2] == ["redis", "7"]
    assert command[0] == "redis-server"
    options = option_pairs(command)
    assert options["appendonly"] == "yes"
    assert options["appendfsync"] == "everysec"
    assert options["maxmemory-policy"] == "noeviction"
    assert options["requirepass"] == FILL["REDIS_PASSWORD"]

    # And /data is a named volume declared at the top level, so the AOF survives the container
    volume = next(v for v in redis_service["volumes"] if str(v).split(":")[1] == "/data")
    assert volume.split(":")[0] in (filled.get("volumes") or {})

    # And the healthcheck pings through redis-cli
    assert "redis-cli" in " ".join(argv(redis_service["healthcheck"]["test"]))


@pytest.mark.integration
@pytest.mark.parametrize("name", REQUIRED_SECRETS)
def test_compose_refuses_to_start_without_a_required_secret(name: str, tmp_path: Path) -> None:
    # Given a .env with every value but one secret filled in
    env_file = write_env(tmp_path, **{name: ""})

    # When Compose reads the file
    result = compose_config(env_file)

    # Then it refuses, as `docker compose up` would, showing the variable it is missing
    assert result.returncode != 0
    assert "Missing mandatory value" in result.stderr
    assert f"${{{name}:?" in result.stderr


# --------------------------------------------------------------------------- worker


@pytest.mark.integration
def test_worker_scales_and_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]

    # Then `docker compose up --scale worker=N` can run it N times
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker  # N workers need N Celery node names

    # And Docker can tell a live worker from a hung one
    assert "inspect ping" in " ".join(argv(worker["healthcheck"]["test"]))

    # And it starts after Redis is healthy, is built from the Dockerfile, reaps children and is
    # given time to finish in-flight deliveries (the HTTP timeout is 10 s by default) on stop
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert Path(worker["build"]["context"]) == ROOT
    assert worker["init"] is True
    assert seconds(worker["stop_grace_period"]) >= 30


@pytest.mark.integration
def test_worker_environment_builds_valid_settings(filled: dict[str, Any]) -> None:
    # Given the worker's environment for a filled-in .env
    env = environment(filled["services"]["worker"])

    # When goalqueue reads its settings from it, as the worker does at start
    settings = Settings.from_env(env)
    settings.require_credentials()

    # Then the worker talks to the compose Redis with the password, and to DataFast over https
    broker = urlsplit(settings.broker_url)
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    assert broker.password == FILL["REDIS_PASSWORD"]
    assert settings.api_key == FILL["DATAFAST_API_KEY"]
    assert settings.api_url.startswith("https://")


@pytest.mark.integration
def test_flower_uses_the_same_broker_as_the_worker(filled: dict[str, Any]) -> None:
    worker, flower = (environment(filled["services"][name]) for name in ("worker", "flower"))
    assert flower["GOALQUEUE_BROKER_URL"] == worker["GOALQUEUE_BROKER_URL"]
    assert "DATAFAST_API_KEY" not in flower  # Flower never delivers; it needs no DataFast key


@pytest.mark.integration
def test_the_monitoring_profile_scrapes_the_exporter_with_its_login_and_loads_the_alerts(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    # Given the monitoring profile as Compose renders it for a .env with a metrics password
    rendered_services = rendered(write_env(tmp_path, METRICS_PASSWORD="pw"))["services"]
    exporter, prometheus = (rendered_services[name] for name in ("metrics", "prometheus"))

    # Then the exporter reads the workers' Redis, listens for Prometheus, and asks for a login
    settings = Settings.from_env(environment(exporter))
    assert settings.broker_url == environment(services["worker"])["GOALQUEUE_BROKER_URL"]
    assert settings.metrics_credentials == ("prometheus", "pw")
    assert option_pairs(argv(exporter["command"])[1:]) == {"host": "0.0.0.0", "port": "9808"}
    assert [str(port) for port in exporter["ports"]] == ["127.0.0.1:9808:9808/tcp"]
    # And without the password it refuses to start, in one line
    with pytest.raises(ConfigError, match="GOALQUEUE_METRICS_BASIC_AUTH"):
        Settings.from_env(environment(services["metrics"]))

    # And Prometheus's config scrapes the exporter with that login and loads the alerting rules
    mount = next(v for v in prometheus["volumes"] if v.endswith(":ro"))
    source, inside = mount.split(":")[:2]
    assert Path(source) == ROOT / "deploy" / "prometheus"
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [f"{inside}/alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["metrics:9808"]
    assert job["basic_auth"]["username"] == "prometheus"

    # When the service's entrypoint runs (its data volume and program stood in for here)
    data, started = tmp_path / "prometheus", tmp_path / "started"
    data.mkdir()
    script = container_shell(argv(prometheus["entrypoint"])[2])
    local = script.replace("/prometheus/", f"{data}/").replace(
        "--storage.tsdb.path=/prometheus", ""
    )
    local = local.replace("exec /bin/prometheus", f"exec echo > {started}")
    assert local != script and "/bin/prometheus" not in local
    subprocess.run(["sh", "-c", local], env=environment(prometheus), check=True, timeout=10)

    # Then the password is in the file the scrape config names, readable by its owner alone,
    # and the config Prometheus starts with is the mounted one
    password_file = Path(job["basic_auth"]["password_file"])
    written = data / password_file.relative_to("/prometheus")
    assert written.read_text() == "pw"
    assert written.stat().st_mode & 0o077 == 0
    assert started.exists()
    assert f"--config.file={inside}/prometheus.yml" in script


# --------------------------------------------------------------------------- flower, sandbox


@pytest.mark.integration
def test_flower_requires_basic_auth_and_publishes_5555(
    services: dict[str, dict[str, Any]], filled: dict[str, Any]
) -> None:
    flower = services["flower"]
    assert argv(flower["command"])[:4] == ["celery", "-A", "workers", "flower"]
    # FLOWER_BASIC_AUTH is passed through, and required (see the refusal test)
    assert (
        environment(filled["services"]["flower"])["FLOWER_BASIC_AUTH"] == FILL["FLOWER_BASIC_AUTH"]
    )
    published = [str(port).rsplit(":", 1)[-1].removesuffix("/tcp") for port in flower["ports"]]
    assert published == ["5555"]


@pytest.mark.integration
def test_sandbox_runs_only_in_the_dev_profile(
    services: dict[str, dict[str, Any]], filled_env: Path
) -> None:
    assert sorted(compose_config(filled_env, None, "--profiles").stdout.split()) == [
        "dev",
        "monitoring",
    ]
    assert services["sandbox"]["profiles"] == ["dev"]
    profiled = {name: s["profiles"] for name, s in services.items() if s.get("profiles")}
    assert profiled == {
        "sandbox": ["dev"],
        "metrics": ["monitoring"],
        "prometheus": ["monitoring"],
    }
    # Its admin endpoints have no auth: published on the host's loopback only
    assert all(str(port).startswith("127.0.0.1:") for port in services["sandbox"]["ports"])


@pytest.mark.integration
def test_dev_instructions_point_the_worker_at_the_sandbox(
    services: dict[str, dict[str, Any]],
) -> None:
    # Given the variables the header comment says to set for the dev profile
    dev = dev_profile_env()

    # Then they point at the sandbox service's port with the key the sandbox accepts
    sandbox = option_pairs(argv(services["sandbox"]["command"])[1:])
    url = urlsplit(dev["DATAFAST_API_URL"])
    assert (url.hostname, url.port, url.path) == ("sandbox", int(sandbox["port"]), "/api/v1/goals")
    assert dev["DATAFAST_API_KEY"] == sandbox["key"]
    assert dev["GOALQUEUE_ALLOW_INSECURE_API_URL"] == "1"

    # And the worker passes each of them through
    assert set(dev) <= set(environment(services["worker"]))


@pytest.mark.integration
def test_plain_http_to_the_sandbox_is_refused_without_the_opt_in(filled: dict[str, Any]) -> None:
    env = environment(filled["services"]["worker"])
    env["DATAFAST_API_URL"] = dev_profile_env()["DATAFAST_API_URL"]
    env["GOALQUEUE_ALLOW_INSECURE_API_URL"] = ""
    with pytest.raises(ConfigError, match="DATAFAST_API_URL"):
        Settings.from_env(env)


@pytest.mark.integration
def test_dev_profile_worker_accepts_the_sandbox_url(filled_env: Path) -> None:
    # Given the worker's environment with the header's dev-profile variables set in the shell
    # (Compose lets them win over the .env)
    env = environment(rendered(filled_env, dev_profile_env())["services"]["worker"])

    # Then the worker's settings take the sandbox URL
    settings = Settings.from_env(env)
    assert settings.api_url == dev_profile_env()["DATAFAST_API_URL"]


# --------------------------------------------------------------------------- entry points


def help_env() -> dict[str, str]:
    """This process's environment without goalqueue or Flower settings, plus the brief's two."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in CODE_VARIABLES and not key.startswith("FLOWER_")
    }
    return {**env, **HELP_ENV}


def local_argv(command: list[str]) -> list[str]:
    """A container command, run from this virtualenv; it must be one of the project's programs."""
    program, *args = command
    assert program in {"goalqueue", "celery"}, f"{program!r} is not a goalqueue entry point"
    if program == "celery":
        assert args[:2] == ["-A", "workers"], "celery must run goalqueue's app: celery -A workers"
    return [str(BIN / program), *args]


def local_shell(command: str) -> str:
    """A CMD-SHELL command line, its program taken from this virtualenv (checked as above)."""
    program, _, rest = command.partition(" ")
    return f"{local_argv([program, *shlex.split(rest)])[0]} {rest}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def entry_point(name: str, services: dict[str, dict[str, Any]]) -> list[str] | str:
    """A service's command as Compose renders it, the worker's healthcheck line, or the
    Dockerfile's CMD."""
    if name == "dockerfile-cmd":
        cmd: list[str] = [
            json.loads(rest) for op, rest in dockerfile_instructions() if op == "CMD"
        ][-1]
        return cmd
    if name == "worker-healthcheck":
        return container_shell(argv(services["worker"]["healthcheck"]["test"])[1])
    return argv(services[name]["command"])


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", ["worker", "flower", "sandbox", "metrics", "worker-healthcheck", "dockerfile-cmd"]
)
def test_each_command_is_a_real_entry_point(
    name: str, services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    # Given a command from the compose file or the Dockerfile (a CMD-SHELL string runs in sh,
    # with $HOSTNAME as the container sets it)
    command = entry_point(name, services)
    env = {**help_env(), "HOSTNAME": socket.gethostname()}
    if isinstance(command, str):
        run = ["sh", "-c", f"{local_shell(command)} --help"]
    else:
        run = [*local_argv(command), "--help"]

    # When it is run with --help, outside the source tree as in the image
    result = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)

    # Then it exists and accepts the options the file gives it (Flower's own tornado options
    # are only parsed when it runs: see the live Flower test)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


# --------------------------------------------------------------------------- variables


def test_every_variable_is_read_by_the_code_or_allow_listed(compose: dict[str, Any]) -> None:
    # Given every variable the compose file interpolates or sets in a container
    named = interpolated_names(compose)
    for service in compose["services"].values():
        named |= set(environment(service))

    # Then goalqueue reads it, or a tool does for a reason written down in ALLOWED_VARIABLES
    assert named - CODE_VARIABLES - set(ALLOWED_VARIABLES) == set()
    # And the allow-list holds nothing the file no longer uses
    assert set(ALLOWED_VARIABLES) <= named


def test_env_example_documents_every_variable_and_holds_no_secret(
    compose: dict[str, Any],
) -> None:
    documented, values = read_env_example()

    # Every variable compose interpolates, and every variable goalqueue reads, is explained
    assert interpolated_names(compose) - documented == set()
    assert CODE_VARIABLES - documented == set()

    # Every value line is one compose actually passes on (no setting that silently does nothing)
    assert set(values) <= interpolated_names(compose)

    # And no value is filled in: no secrets, and the code's defaults apply unless chosen
    assert {name: value for name, value in values.items() if value} == {}


# --------------------------------------------------------------------------- image


def test_dockerfile_bakes_in_no_secrets_and_runs_as_non_root() -> None:
    instructions = dockerfile_instructions()

    assert instructions[0] == ("FROM", "python:3.11-slim")

    # No ENV or ARG names a key, password, secret or token
    for name, rest in instructions:
        if name in {"ENV", "ARG"}:
            keys = [token.split("=")[0] for token in shlex.split(rest) if "=" in token]
            keys = keys or shlex.split(rest)[:1]  # the legacy `ENV KEY value` form
            assert not [key for key in keys if SECRET_WORDS.search(key)], rest

    # The project, with what the workers and the sandbox need, and Flower are installed without
    # a pip cache
    runs = " ".join(rest for name, rest in instructions if name == "RUN")
    install = re.search(r"pip install --no-cache-dir \"?(?:/src|\.)\[([\w,]+)\]\"?", runs)
    assert install, runs
    assert {"worker", "sandbox"} <= set(install.group(1).split(","))
    assert re.search(r"pip install --no-cache-dir \S*flower", runs)

    # The last USER is not root
    user = [rest for name, rest in instructions if name == "USER"][-1]
    assert user.split(":")[0] not in {"root", "0"}


def test_dockerignore_admits_only_the_package_sources() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is excluded first, so .env, .git and venvs never reach the build context
    assert patterns[0] == "*"
    admitted = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert {"pyproject.toml", "goalqueue", "workers"} <= admitted
    assert not [p for p in admitted if p.startswith(".env") or p in {".git", ".", "*"}]


# --------------------------------------------------------------------------- live checks


class Output:
    """A process's combined output, collected by a thread so tests can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._done = False
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> None:
        """Block until a line matches ``pattern``; fail if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(re.search(pattern, line) for line in self.lines):
                remaining = deadline - time.monotonic()
                if self._done or remaining <= 0:
                    pytest.fail(f"no line matching {pattern!r}; output:\n{self.text}")
                self._changed.wait(remaining)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def start(command: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def stop(process: subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM, as `docker stop` sends; SIGKILL only if ``timeout`` (the grace period) runs out."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def locally(url: str, port: int) -> str:
    """A ``redis://:pw@redis:6379/0`` broker URL pointed at the test's Redis instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f":{parts.password}@127.0.0.1:{port}"))


needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture(scope="module")
def compose_redis(
    services: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """The redis service's own command line, run on a free loopback port."""
    program, *options = argv(services["redis"]["command"])
    assert program == "redis-server"
    server = RedisServer(tmp_path_factory.mktemp("redis"), options=tuple(options)).start()
    yield server
    server.stop()


@pytest.mark.integration
@needs_redis_server
def test_the_redis_command_line_takes_effect(
    compose_redis: RedisServer, filled: dict[str, Any]
) -> None:
    port, password = compose_redis.port, FILL["REDIS_PASSWORD"]

    # Then an unauthenticated client is refused
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()

    # And with the password the durability settings are live
    client = redis.Redis(port=port, password=password, decode_responses=True)
    wanted = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
    assert {key: client.config_get(key)[key] for key in wanted} == wanted

    # And the healthcheck passes with the service's REDISCLI_AUTH, and fails without it
    redis_service = filled["services"]["redis"]
    check = argv(redis_service["healthcheck"]["test"])[1]
    check = check.replace("redis-cli", f"redis-cli -p {port}")
    auth = environment(redis_service)["REDISCLI_AUTH"]
    for password_given, expected in ((auth, 0), ("wrong", 1)):
        env = {**os.environ, "REDISCLI_AUTH": password_given}
        result = subprocess.run(["sh", "-c", check], env=env, capture_output=True, timeout=10)
        assert result.returncode == expected, result


@pytest.mark.integration
@needs_redis_server
def test_the_worker_healthcheck_answers_for_a_running_worker(
    compose_redis: RedisServer, filled: dict[str, Any], tmp_path: Path
) -> None:
    # Given the worker service's command and environment, against the compose Redis settings
    port = compose_redis.port
    worker = filled["services"]["worker"]
    env = {**help_env(), **environment(worker)}
    env["GOALQUEUE_BROKER_URL"] = locally(env["GOALQUEUE_BROKER_URL"], port)
    env["HOSTNAME"] = socket.gethostname()  # as Docker sets it: the node name Celery picks
    process = start(local_argv(argv(worker["command"])), env, tmp_path)
    output = Output(process)
    processes = default_processes()
    try:
        # (one worker process per core, each under its own node name)
        for index in range(1, processes + 1):
            output.wait_for(rf"worker{index}@\S+ ready\.")

        # When Docker runs the healthcheck in the container
        check = argv(worker["healthcheck"]["test"])
        assert check[0] == "CMD-SHELL"
        result = subprocess.run(
            ["sh", "-c", local_shell(container_shell(check[1]))],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds(worker["healthcheck"]["timeout"]),
        )

        # Then every worker process answers, and none had a complaint about Redis's eviction
        # policy
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("pong") == processes, result.stdout
        assert "maxmemory-policy" not in output.text
    finally:
        # And `docker stop` (SIGTERM) ends it cleanly within the grace period
        returncode = stop(process, timeout=seconds(worker["stop_grace_period"]))
    assert returncode == 0, output.text


@pytest.mark.integration
@needs_redis_server
def test_flower_reads_basic_auth_from_its_environment(
    compose_redis: RedisServer, filled: dict[str, Any], tmp_path: Path
) -> None:
    # Given Flower run with the service's command and environment (on a free local port)
    port, flower_port = compose_redis.port, free_port()
    flower = filled["services"]["flower"]
    env = {**help_env(), **environment(flower)}
    env["GOALQUEUE_BROKER_URL"] = locally(env["GOALQUEUE_BROKER_URL"], port)
    command = [*local_argv(argv(flower["command"])), f"--port={flower_port}", "--address=127.0.0.1"]
    process = start(command, env, tmp_path)
    output = Output(process)
    try:
        output.wait_for(r"Visit me at")
        base = f"http://127.0.0.1:{flower_port}"
        user, _, password = FILL["FLOWER_BASIC_AUTH"].partition(":")
        with httpx.Client(base_url=base, timeout=10) as http:
            # Then the dashboard needs the login from FLOWER_BASIC_AUTH
            assert http.get("/workers").status_code == 401
            assert http.get("/workers", auth=(user, "wrong")).status_code == 401
            assert http.get("/workers", auth=(user, password)).status_code == 200
            # And the healthcheck URL the compose file polls answers without it
            assert http.get("/healthcheck").text == "OK"
        assert "/healthcheck" in " ".join(argv(flower["healthcheck"]["test"]))
    finally:
        stop(process, timeout=10)
