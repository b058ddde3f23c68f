"""Redis Sentinel broker URLs, in kombu's form, read the way kombu reads them.

``GOALQUEUE_BROKER_URL=sentinel://[[user]:password@]host:26379;sentinel://host2:26379/0`` names
the sentinels of one Redis deployment, separated by ``;``; ``GOALQUEUE_SENTINEL_MASTER`` names
the master they watch. kombu's Sentinel transport takes the database, the user, the password
(of the master and its replicas) and any TLS options (``ssl_*`` query parameters) from the
*first* URL only. goalqueue's own clients must use the same database as Celery, so a later URL
that names another database, other credentials or other options is refused rather than
silently ignored. The sentinels' own password is ``GOALQUEUE_SENTINEL_PASSWORD``.

TLS: ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
``ssl_check_hostname`` on the first URL turn on TLS for the master, the replicas and the
sentinels alike (redis-py's ``SentinelManagedSSLConnection`` and ``ssl=True``), with those
options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from goalqueue.errors import ConfigError
from goalqueue.urls import redact

SCHEME = "sentinel"
DEFAULT_PORT = 26379
TLS_OPTIONS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)
_CERT_REQS = frozenset({"none", "optional", "required"})


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Redis through Sentinel (kombu's ``sentinel://`` form)."""
    return url.strip().lower().startswith(f"{SCHEME}://")


@dataclass(frozen=True)
class SentinelURL:
    """What a ``sentinel://`` broker URL says: the sentinels, and how to talk to the master."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: dict[str, str | bool] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        """Parse kombu's ``sentinel://...;sentinel://...`` form; :class:`ConfigError` if bad."""
        parts = [_one(part) for part in url.split(";")]
        first = parts[0]
        for other in parts[1:]:
            if other.db is not None and other.db != (first.db or 0):
                raise ConfigError(
                    "GOALQUEUE_BROKER_URL: every sentinel:// URL must name the same database "
                    "(kombu reads it from the first one)"
                )
            if (other.username, other.password, other.tls) not in (
                (None, None, {}),
                (first.username, first.password, first.tls),
            ):
                raise ConfigError(
                    "GOALQUEUE_BROKER_URL: put credentials and ssl_* options on the first "
                    "sentinel:// URL only (kombu reads them from there)"
                )
        return cls(
            sentinels=tuple(part.address for part in parts),
            db=first.db or 0,
            username=first.username,
            password=first.password,
            tls=first.tls,
        )

    def connection_kwargs(self) -> dict[str, object]:
        """redis-py keyword arguments for connections to the master (and replicas)."""
        kwargs: dict[str, object] = {"db": self.db}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs.update(self.tls, ssl=True)
        return kwargs


@dataclass(frozen=True)
class _Part:
    address: tuple[str, int]
    db: int | None
    username: str | None
    password: str | None
    tls: dict[str, str | bool]


def _one(url: str) -> _Part:
    shown = redact(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"GOALQUEUE_BROKER_URL has a bad sentinel URL: {shown!r}") from None
    if parts.scheme.lower() != SCHEME or not parts.hostname:
        raise ConfigError(
            "GOALQUEUE_BROKER_URL must look like sentinel://host:26379;sentinel://host2:26379/0 "
            f"(each part a sentinel:// URL with a host), got {shown!r}"
        )
    return _Part(
        address=(parts.hostname, port),
        db=_db(parts.path, shown),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=_tls(parts.query, shown),
    )


def _db(path: str, shown: str) -> int | None:
    path = path.strip("/")
    if not path:
        return None
    if not path.isdigit():
        raise ConfigError(f"GOALQUEUE_BROKER_URL: the database must be a number, in {shown!r}")
    return int(path)


def _tls(query: str, shown: str) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in TLS_OPTIONS:
            raise ConfigError(
                f"GOALQUEUE_BROKER_URL: unknown sentinel URL option {name!r} in {shown!r} "
                f"(known: {', '.join(sorted(TLS_OPTIONS))})"
            )
        options[name] = value
    if "ssl_cert_reqs" in options:
        reqs = str(options["ssl_cert_reqs"]).lower().removeprefix("cert_")
        if reqs not in _CERT_REQS:
            raise ConfigError(
                "GOALQUEUE_BROKER_URL: ssl_cert_reqs must be none, optional or required, "
                f"in {shown!r}"
            )
        options["ssl_cert_reqs"] = reqs
    if "ssl_check_hostname" in options:
        options["ssl_check_hostname"] = str(options["ssl_check_hostname"]).lower() != "false"
    return options
