"""Settings, read once from the environment into a frozen object.

Every variable is documented in the README. A bad value raises :class:`ConfigError` naming the
variable, so a misconfigured process fails at start instead of at its first goal.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache, cached_property
from urllib.parse import SplitResult, urlsplit

from goalqueue.errors import ConfigError
from goalqueue.keys import DEFAULT_NAMESPACE, NAMESPACE_PATTERN, Keys
from goalqueue.sentinel import SentinelURL, is_sentinel_url
from goalqueue.urls import redact

DEFAULT_API_URL = "https://datafa.st/api/v1/goals"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
BROKER_SCHEMES = frozenset({"redis", "rediss", "unix"})
MAX_REPLICAS = 100
MAX_UNKNOWN_ATTEMPTS = 100
MAX_DEAD_LETTERS = 100_000_000
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Settings:
    """Everything goalqueue reads from the environment.

    Durations are seconds as floats; sub-second values work (the tests use them).
    """

    broker_url: str = field(default=DEFAULT_BROKER_URL, repr=False)
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    min_replicas: int | None = field(default=None, metadata={"parse": "int"})
    namespace: str = DEFAULT_NAMESPACE
    api_key: str | None = field(default=None, repr=False)
    website_id: str | None = None
    api_url: str = DEFAULT_API_URL
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 900.0
    max_age_seconds: float = 72 * 3600.0
    http_timeout_seconds: float = 10.0
    visibility_timeout_seconds: float = 60.0
    sweep_interval_seconds: float = 1.0
    outage_reminder_seconds: float = 60.0
    reconnect_max_seconds: float = 30.0
    consumer_stall_seconds: float = 60.0
    delivered_ttl_seconds: float = 24 * 3600.0
    enqueue_timeout_seconds: float = 2.0
    spool_dir: str | None = None
    max_in_flight: int = 256
    max_rate: float | None = field(default=None, metadata={"parse": "rate"})
    max_unknown_attempts: int = 3
    dead_max: int = 100_000
    dead_retention_days: float = field(default=30.0, metadata={"parse": "days"})
    allow_insecure_api_url: bool = False
    metrics_basic_auth: str | None = field(default=None, repr=False)
    log_format: str = "text"

    def __post_init__(self) -> None:
        for name in (
            "retry_base_seconds",
            "retry_max_seconds",
            "max_age_seconds",
            "http_timeout_seconds",
            "visibility_timeout_seconds",
            "sweep_interval_seconds",
            "outage_reminder_seconds",
            "reconnect_max_seconds",
            "consumer_stall_seconds",
            "delivered_ttl_seconds",
            "enqueue_timeout_seconds",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{ENV_NAMES[name]} must be a positive, finite number of seconds")
        if not 1 <= self.max_in_flight <= 10_000:
            raise ConfigError("GOALQUEUE_MAX_IN_FLIGHT must be a whole number from 1 to 10000")
        if not 1 <= self.max_unknown_attempts <= MAX_UNKNOWN_ATTEMPTS:
            raise ConfigError(
                "GOALQUEUE_MAX_UNKNOWN_ATTEMPTS must be a whole number from 1 to "
                f"{MAX_UNKNOWN_ATTEMPTS}"
            )
        if not 1 <= self.dead_max <= MAX_DEAD_LETTERS:
            raise ConfigError(
                f"GOALQUEUE_DEAD_MAX must be a whole number from 1 to {MAX_DEAD_LETTERS:,}"
            )
        if not (self.dead_retention_days > 0 and math.isfinite(self.dead_retention_days)):
            raise ConfigError("GOALQUEUE_DEAD_RETENTION_DAYS must be a positive number of days")
        if self.max_rate is not None and not (self.max_rate > 0 and math.isfinite(self.max_rate)):
            raise ConfigError("GOALQUEUE_MAX_RATE must be a positive number of goals per second")
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ConfigError(
                "GOALQUEUE_RETRY_MAX_SECONDS must not be smaller than GOALQUEUE_RETRY_BASE_SECONDS"
            )
        if self.visibility_timeout_seconds <= self.http_timeout_seconds:
            raise ConfigError(
                "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS must exceed GOALQUEUE_HTTP_TIMEOUT_SECONDS: "
                "a goal still being delivered would otherwise be sent twice"
            )
        if self.consumer_stall_seconds <= self.reconnect_max_seconds:
            raise ConfigError(
                "GOALQUEUE_CONSUMER_STALL_SECONDS must exceed GOALQUEUE_RECONNECT_MAX_SECONDS: a "
                "worker waiting to reconnect would otherwise be taken for a stalled one"
            )
        if not NAMESPACE_PATTERN.fullmatch(self.namespace):
            raise ConfigError(
                "GOALQUEUE_NAMESPACE must be 1-64 characters of a-z 0-9 _ . - (starting with a "
                f"letter or digit), got {self.namespace!r}"
            )
        if (credentials := self.metrics_credentials) is not None and not all(credentials):
            raise ConfigError(
                "GOALQUEUE_METRICS_BASIC_AUTH (or --basic-auth) must be user:password, both "
                "non-empty"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"GOALQUEUE_LOG_FORMAT must be text or json, got {self.log_format!r}")
        _check_broker_url(self.broker_url)
        self._check_sentinel()
        _check_api_url(self.api_url, allow_insecure=self.allow_insecure_api_url)

    def _check_sentinel(self) -> None:
        if self.sentinel is not None and not self.sentinel_master:
            raise ConfigError(
                "GOALQUEUE_SENTINEL_MASTER is not set: a sentinel:// GOALQUEUE_BROKER_URL needs "
                "the name of the master the sentinels watch"
            )
        if self.sentinel is None and (self.sentinel_master or self.sentinel_password):
            raise ConfigError(
                "GOALQUEUE_SENTINEL_MASTER and GOALQUEUE_SENTINEL_PASSWORD need a sentinel:// "
                "GOALQUEUE_BROKER_URL"
            )
        if self.min_replicas is not None and not 0 <= self.min_replicas <= MAX_REPLICAS:
            raise ConfigError(
                f"GOALQUEUE_MIN_REPLICAS must be a whole number from 0 to {MAX_REPLICAS}"
            )

    @cached_property
    def sentinel(self) -> SentinelURL | None:
        """The sentinels and master options of a ``sentinel://`` broker URL; None for a plain
        Redis URL."""
        return SentinelURL.parse(self.broker_url) if is_sentinel_url(self.broker_url) else None

    @property
    def replicas_to_wait_for(self) -> int:
        """How many replicas must hold an enqueued goal before ``track_goal`` returns:
        ``GOALQUEUE_MIN_REPLICAS``, by default 1 behind Sentinel and 0 (no WAIT) otherwise."""
        if self.min_replicas is not None:
            return self.min_replicas
        return 1 if self.sentinel is not None else 0

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        overrides: Mapping[str, object] | None = None,
    ) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); unset variables keep defaults.

        ``overrides`` (a framework's configuration: Django's ``GOALQUEUE`` dict, Flask's
        ``app.config``) maps variable names to values that win over the environment's; a name
        that is not a setting, or a value that is not text, a number or a boolean, is refused.
        """
        env = {**(os.environ if environ is None else environ), **_as_text(overrides or {})}
        values: dict[str, object] = {}
        for spec in fields(cls):
            var = ENV_NAMES[spec.name]
            raw = env.get(var, "").strip()
            if raw:
                parse = _PARSERS.get(spec.metadata.get("parse", str(spec.type)), _text)
                values[spec.name] = parse(var, raw)
        return cls(**values)  # type: ignore[arg-type]

    def require_credentials(self) -> None:
        """Fail unless the DataFast credentials are complete; workers call this at start."""
        if not self.api_key:
            raise ConfigError("DATAFAST_API_KEY is not set: workers need a DataFast API key")
        if self.api_key.startswith("dft_") and not self.website_id:
            raise ConfigError(
                "DATAFAST_WEBSITE_ID is not set: a dft_ account token needs the website id"
            )

    @cached_property
    def keys(self) -> Keys:
        """The Redis keys of this deployment's namespace."""
        return Keys(self.namespace)

    @property
    def metrics_credentials(self) -> tuple[str, str] | None:
        """The user and password ``goalqueue metrics`` asks for, if any."""
        if self.metrics_basic_auth is None:
            return None
        user, _, password = self.metrics_basic_auth.partition(":")
        return user, password

    @property
    def dead_retention_seconds(self) -> float:
        """How long a dead letter is kept at most (``GOALQUEUE_DEAD_RETENTION_DAYS``)."""
        return self.dead_retention_days * 86400

    @property
    def probe_lease_ms(self) -> int:
        """How long the one probe goal after a pause may hold the way before another is sent."""
        return int(self.visibility_timeout_seconds * 1000)

    @property
    def key_fingerprint(self) -> str:
        """A short, one-way tag of the API key and the URL it is sent to, so that a pause for
        a configuration problem (a bad key, a redirect, a TLS failure) can tell a worker
        configured otherwise, which drops it."""
        configured = f"{self.api_key or ''}\n{self.api_url}"
        return hashlib.sha256(configured.encode()).hexdigest()[:16]


ENV_NAMES: dict[str, str] = {
    "broker_url": "GOALQUEUE_BROKER_URL",
    "sentinel_master": "GOALQUEUE_SENTINEL_MASTER",
    "sentinel_password": "GOALQUEUE_SENTINEL_PASSWORD",
    "min_replicas": "GOALQUEUE_MIN_REPLICAS",
    "namespace": "GOALQUEUE_NAMESPACE",
    "api_key": "DATAFAST_API_KEY",
    "website_id": "DATAFAST_WEBSITE_ID",
    "api_url": "DATAFAST_API_URL",
    "retry_base_seconds": "GOALQUEUE_RETRY_BASE_SECONDS",
    "retry_max_seconds": "GOALQUEUE_RETRY_MAX_SECONDS",
    "max_age_seconds": "GOALQUEUE_MAX_AGE_SECONDS",
    "http_timeout_seconds": "GOALQUEUE_HTTP_TIMEOUT_SECONDS",
    "visibility_timeout_seconds": "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS",
    "sweep_interval_seconds": "GOALQUEUE_SWEEP_INTERVAL_SECONDS",
    "outage_reminder_seconds": "GOALQUEUE_OUTAGE_REMINDER_SECONDS",
    "reconnect_max_seconds": "GOALQUEUE_RECONNECT_MAX_SECONDS",
    "consumer_stall_seconds": "GOALQUEUE_CONSUMER_STALL_SECONDS",
    "delivered_ttl_seconds": "GOALQUEUE_DELIVERED_TTL_SECONDS",
    "enqueue_timeout_seconds": "GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS",
    "spool_dir": "GOALQUEUE_SPOOL_DIR",
    "max_in_flight": "GOALQUEUE_MAX_IN_FLIGHT",
    "max_rate": "GOALQUEUE_MAX_RATE",
    "max_unknown_attempts": "GOALQUEUE_MAX_UNKNOWN_ATTEMPTS",
    "dead_max": "GOALQUEUE_DEAD_MAX",
    "dead_retention_days": "GOALQUEUE_DEAD_RETENTION_DAYS",
    "allow_insecure_api_url": "GOALQUEUE_ALLOW_INSECURE_API_URL",
    "metrics_basic_auth": "GOALQUEUE_METRICS_BASIC_AUTH",
    "log_format": "GOALQUEUE_LOG_FORMAT",
}


@cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()


def _as_text(overrides: Mapping[str, object]) -> dict[str, str]:
    """Configured values as the environment would give them; None leaves a setting alone."""
    known = set(ENV_NAMES.values())
    text: dict[str, str] = {}
    for name, value in overrides.items():
        if name not in known:
            raise ConfigError(f"{name} is not a goalqueue setting (see the README's table)")
        if isinstance(value, bool):
            text[name] = "1" if value else "0"
        elif isinstance(value, str | int | float):
            text[name] = str(value)
        elif value is not None:
            raise ConfigError(
                f"{name} must be text, a number or a boolean, not {type(value).__name__}"
            )
    return text


def _parse_number(unit: str) -> Callable[[str, str], float]:
    def parse(var: str, raw: str) -> float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var} must be a number of {unit}, got {raw!r}") from None

    return parse


def _parse_count(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a whole number, got {raw!r}") from None


def _parse_flag(var: str, raw: str) -> bool:
    value = raw.lower()
    if value not in _FLAGS:
        raise ConfigError(f"{var} must be 1/true/yes or 0/false/no, got {raw!r}")
    return _FLAGS[value]


def _text(var: str, raw: str) -> str:
    return raw


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
# How a variable's value is read: by the type of its field, unless its metadata names a parser.
_PARSERS: dict[str, Callable[[str, str], object]] = {
    "float": _parse_number("seconds"),
    "rate": _parse_number("goals per second"),
    "days": _parse_number("days"),
    "bool": _parse_flag,
    "int": _parse_count,
}


def _check_broker_url(url: str) -> None:
    if is_sentinel_url(url):
        SentinelURL.parse(url)
        return
    parts = _split("GOALQUEUE_BROKER_URL", url)
    if parts.scheme not in BROKER_SCHEMES or (parts.scheme != "unix" and not parts.hostname):
        raise ConfigError(
            f"GOALQUEUE_BROKER_URL must look like redis://host:6379/0 (or rediss://, unix://, "
            f"sentinel://host:26379;sentinel://host2:26379/0), got {redact(url)!r}"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ConfigError(f"GOALQUEUE_BROKER_URL has a bad port: {redact(url)!r}") from None


def _check_api_url(url: str, *, allow_insecure: bool) -> None:
    parts = _split("DATAFAST_API_URL", url)
    if parts.scheme == "https" and parts.hostname:
        return
    if (
        parts.scheme == "http"
        and parts.hostname
        and (allow_insecure or _is_loopback(parts.hostname))
    ):
        return
    raise ConfigError(
        "DATAFAST_API_URL must be an https:// URL (plain http only for a loopback host, or "
        f"anywhere with GOALQUEUE_ALLOW_INSECURE_API_URL=1), got {redact(url)!r}"
    )


def _split(var: str, url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{var} is not a valid URL ({exc}): {redact(url)!r}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
