"""Settings read from an environment mapping: defaults, parsing, refusals naming the variable.

Every test passes its own dict to ``Settings.from_env``, so the real environment never matters.
"""

from __future__ import annotations

import pytest

from goalqueue import ConfigError, GoalQueueError, Settings

API_KEY = "df_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
PASSWORD = "s3cret"

SECONDS_VARS = [
    "GOALQUEUE_RETRY_BASE_SECONDS",
    "GOALQUEUE_RETRY_MAX_SECONDS",
    "GOALQUEUE_MAX_AGE_SECONDS",
    "GOALQUEUE_HTTP_TIMEOUT_SECONDS",
    "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS",
    "GOALQUEUE_SWEEP_INTERVAL_SECONDS",
    "GOALQUEUE_OUTAGE_REMINDER_SECONDS",
    "GOALQUEUE_RECONNECT_MAX_SECONDS",
    "GOALQUEUE_CONSUMER_STALL_SECONDS",
    "GOALQUEUE_DELIVERED_TTL_SECONDS",
    "GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS",
]


def config_error(env: dict[str, str]) -> str:
    """The message of the ConfigError that ``env`` raises (fails the test if none is raised)."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return str(caught.value)


# ------------------------------------------------------------------------------------ defaults


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.api_url == "https://datafa.st/api/v1/goals"
    assert settings.api_key is None
    assert settings.website_id is None
    assert settings.retry_base_seconds == 1.0
    assert settings.retry_max_seconds == 900.0
    assert settings.max_age_seconds == 72 * 3600.0
    assert settings.http_timeout_seconds == 10.0
    assert settings.visibility_timeout_seconds == 60.0
    assert settings.sweep_interval_seconds == 1.0
    assert settings.delivered_ttl_seconds == 24 * 3600.0
    assert settings.enqueue_timeout_seconds == 2.0


def test_blank_and_unrelated_variables_keep_the_defaults() -> None:
    env = {var: "   " for var in SECONDS_VARS}
    env.update({"GOALQUEUE_BROKER_URL": "", "DATAFAST_API_KEY": " ", "PATH": "/usr/bin"})
    assert Settings.from_env(env) == Settings()


def test_values_are_read_and_trimmed() -> None:
    settings = Settings.from_env(
        {
            "GOALQUEUE_BROKER_URL": " rediss://:pw@redis.internal:6380/2 ",
            "DATAFAST_API_KEY": API_KEY,
            "DATAFAST_WEBSITE_ID": "site_123",
            "DATAFAST_API_URL": "https://datafa.st/api/v1/goals",
        }
    )
    assert settings.broker_url == "rediss://:pw@redis.internal:6380/2"
    assert settings.api_key == API_KEY
    assert settings.website_id == "site_123"


# ------------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({"GOALQUEUE_RETRY_BASE_SECONDS": "0.2"}, "retry_base_seconds", 0.2),
        (
            {"GOALQUEUE_RETRY_BASE_SECONDS": "0.05", "GOALQUEUE_RETRY_MAX_SECONDS": "0.5"},
            "retry_max_seconds",
            0.5,
        ),
        ({"GOALQUEUE_MAX_AGE_SECONDS": "0.2"}, "max_age_seconds", 0.2),
        ({"GOALQUEUE_HTTP_TIMEOUT_SECONDS": "0.2"}, "http_timeout_seconds", 0.2),
        (
            {
                "GOALQUEUE_HTTP_TIMEOUT_SECONDS": "0.2",
                "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS": "0.5",
            },
            "visibility_timeout_seconds",
            0.5,
        ),
        ({"GOALQUEUE_SWEEP_INTERVAL_SECONDS": "0.1"}, "sweep_interval_seconds", 0.1),
        ({"GOALQUEUE_DELIVERED_TTL_SECONDS": "0.2"}, "delivered_ttl_seconds", 0.2),
        ({"GOALQUEUE_ENQUEUE_TIMEOUT_SECONDS": " 0.25 "}, "enqueue_timeout_seconds", 0.25),
        ({"GOALQUEUE_MAX_AGE_SECONDS": "3600"}, "max_age_seconds", 3600.0),
        ({"GOALQUEUE_MAX_AGE_SECONDS": "1e3"}, "max_age_seconds", 1000.0),
    ],
)
def test_durations_parse_including_sub_second_values(
    env: dict[str, str], attribute: str, expected: float
) -> None:
    assert getattr(Settings.from_env(env), attribute) == pytest.approx(expected)


@pytest.mark.parametrize("var", SECONDS_VARS)
@pytest.mark.parametrize(
    "raw", ["abc", "1s", "ten", "1,5", "0", "0.0", "-1", "-0.2", "nan"], ids=repr
)
def test_bad_durations_are_refused_naming_the_variable(var: str, raw: str) -> None:
    # Given one duration that is not a positive number
    # When the settings are read
    message = config_error({var: raw})
    # Then the error names that variable
    assert var in message


@pytest.mark.parametrize(
    "var", ["GOALQUEUE_DELIVERED_TTL_SECONDS", "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS"]
)
@pytest.mark.parametrize("raw", ["inf", "Infinity"])
def test_an_infinite_duration_is_refused_at_start(var: str, raw: str) -> None:
    assert var in config_error({var: raw})


def test_config_error_is_a_goalqueue_error() -> None:
    with pytest.raises(GoalQueueError):
        Settings.from_env({"GOALQUEUE_RETRY_BASE_SECONDS": "-1"})


def test_retry_max_below_retry_base_is_refused() -> None:
    message = config_error(
        {"GOALQUEUE_RETRY_BASE_SECONDS": "10", "GOALQUEUE_RETRY_MAX_SECONDS": "5"}
    )
    assert "GOALQUEUE_RETRY_MAX_SECONDS" in message
    assert "GOALQUEUE_RETRY_BASE_SECONDS" in message


def test_retry_max_equal_to_retry_base_is_fine() -> None:
    env = {"GOALQUEUE_RETRY_BASE_SECONDS": "5", "GOALQUEUE_RETRY_MAX_SECONDS": "5"}
    assert Settings.from_env(env).retry_max_seconds == 5.0


VISIBILITY, HTTP = "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS", "GOALQUEUE_HTTP_TIMEOUT_SECONDS"
STALL, RECONNECT = "GOALQUEUE_CONSUMER_STALL_SECONDS", "GOALQUEUE_RECONNECT_MAX_SECONDS"


@pytest.mark.parametrize(
    ("greater", "lesser", "values"),
    [
        (VISIBILITY, HTTP, ("10", "10")),
        (VISIBILITY, HTTP, ("5", "10")),
        (VISIBILITY, HTTP, ("0.5", "0.5")),
        (VISIBILITY, HTTP, ("0.2", "0.3")),
        # a consumer waiting out kombu's back-off would otherwise be taken for a stalled one
        (STALL, RECONNECT, ("30", "30")),
        (STALL, RECONNECT, ("10", "30")),
        (STALL, RECONNECT, ("60", "90")),
    ],
)
def test_a_setting_must_exceed_another(greater: str, lesser: str, values: tuple[str, str]) -> None:
    message = config_error(dict(zip((greater, lesser), values, strict=True)))
    assert greater in message
    assert lesser in message


def test_the_default_visibility_timeout_is_checked_against_a_longer_http_timeout() -> None:
    # Given only the HTTP timeout, raised past the default visibility timeout (60 s)
    message = config_error({"GOALQUEUE_HTTP_TIMEOUT_SECONDS": "90"})
    assert "GOALQUEUE_VISIBILITY_TIMEOUT_SECONDS" in message


def test_the_consumer_stall_limit_defaults_to_a_minute() -> None:
    assert Settings.from_env({}).consumer_stall_seconds == 60.0
    env = {"GOALQUEUE_CONSUMER_STALL_SECONDS": "3", "GOALQUEUE_RECONNECT_MAX_SECONDS": "1"}
    assert Settings.from_env(env).consumer_stall_seconds == 3.0


# ----------------------------------------------------------------------------------- broker URL


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://redis:6379",
        "redis://:pw@host:6379/1",
        "redis://user:pw@host/0",
        "rediss://host.example.com:6380/0",
        "redis://[::1]:6379/0",
        "unix:///var/run/redis.sock",
    ],
)
def test_good_broker_urls_are_accepted(url: str) -> None:
    assert Settings.from_env({"GOALQUEUE_BROKER_URL": url}).broker_url == url


@pytest.mark.parametrize(
    "url",
    [
        "localhost:6379",
        "localhost",
        "http://x",
        "https://redis.example.com:6379",
        "redis://",
        "redis:///0",
        "redis://host:notaport",
        "redis://host:99999/0",
        "redis://host:-1/0",
        "amqp://guest@localhost//",
    ],
)
def test_malformed_broker_urls_are_refused_naming_the_variable(url: str) -> None:
    message = config_error({"GOALQUEUE_BROKER_URL": url})
    assert "GOALQUEUE_BROKER_URL" in message


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@host:bad/0",
        f"redis://admin:{PASSWORD}@host:bad/0",
        f"redis://:{PASSWORD}@host:99999/0",
        f"redis://:{PASSWORD}@/0",
        f"http://:{PASSWORD}@host:6379/0",
        f"rediss://default:{PASSWORD}@:6380",
    ],
)
def test_a_refused_broker_url_never_shows_its_password(url: str) -> None:
    # Given a malformed broker URL that carries a password
    # When the settings are read
    message = config_error({"GOALQUEUE_BROKER_URL": url})
    # Then the message names the variable and shows the URL, but not the password
    assert "GOALQUEUE_BROKER_URL" in message
    assert PASSWORD not in message
    assert "***" in message


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"GOALQUEUE_BROKER_URL": f"redis://:{PASSWORD}@[::1/0"}, id="broker"),
        pytest.param({"DATAFAST_API_URL": "https://[::1/api/v1/goals"}, id="api"),
    ],
)
def test_an_unclosed_ipv6_bracket_is_a_config_error(env: dict[str, str]) -> None:
    message = config_error(env)
    assert next(iter(env)) in message
    assert PASSWORD not in message


# -------------------------------------------------------------------------------------- API URL


@pytest.mark.parametrize(
    "url",
    [
        "https://datafa.st/api/v1/goals",
        "https://proxy.internal:8443/goals",
        "http://127.0.0.1:8765/api/v1/goals",
        "http://127.0.0.1",
        "http://127.1.2.3/api",
        "http://localhost",
        "http://localhost:8765/api/v1/goals",
        "http://LOCALHOST:8765",
        "http://[::1]",
        "http://[::1]:8765/api/v1/goals",
    ],
)
def test_api_url_must_be_https_unless_loopback(url: str) -> None:
    assert Settings.from_env({"DATAFAST_API_URL": url}).api_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://datafa.st/api/v1/goals",
        "http://localhost.example.com/api",
        "http://10.0.0.5/api",
        "http://[::2]/api",
        "ftp://datafa.st/api",
        "datafa.st/api/v1/goals",
        "https://",
        "https:///api/v1/goals",
    ],
)
def test_api_url_that_is_not_https_or_loopback_is_refused(url: str) -> None:
    message = config_error({"DATAFAST_API_URL": url})
    assert "DATAFAST_API_URL" in message


def test_plain_http_anywhere_needs_the_explicit_opt_in() -> None:
    env = {"DATAFAST_API_URL": "http://sandbox:8765/api/v1/goals"}
    assert "DATAFAST_API_URL" in config_error(env)
    opted_in = Settings.from_env({**env, "GOALQUEUE_ALLOW_INSECURE_API_URL": "1"})
    assert opted_in.api_url == env["DATAFAST_API_URL"]
    assert "GOALQUEUE_ALLOW_INSECURE_API_URL" in config_error(
        {**env, "GOALQUEUE_ALLOW_INSECURE_API_URL": "maybe"}
    )


# ---------------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "DATAFAST_API_KEY"),
        ({"DATAFAST_API_KEY": "  "}, "DATAFAST_API_KEY"),
        ({"DATAFAST_WEBSITE_ID": "site_1"}, "DATAFAST_API_KEY"),
        ({"DATAFAST_API_KEY": "dft_account_token"}, "DATAFAST_WEBSITE_ID"),
    ],
)
def test_incomplete_credentials_are_refused(env: dict[str, str], variable: str) -> None:
    settings = Settings.from_env(env)
    with pytest.raises(ConfigError, match=variable):
        settings.require_credentials()


@pytest.mark.parametrize(
    "env",
    [
        {"DATAFAST_API_KEY": "df_website_key"},
        {"DATAFAST_API_KEY": "dft_account_token", "DATAFAST_WEBSITE_ID": "site_1"},
    ],
)
def test_complete_credentials_are_accepted(env: dict[str, str]) -> None:
    Settings.from_env(env).require_credentials()


def test_a_credentials_error_does_not_show_the_token() -> None:
    settings = Settings.from_env({"DATAFAST_API_KEY": "dft_topsecret_token"})
    with pytest.raises(ConfigError) as caught:
        settings.require_credentials()
    assert "topsecret" not in str(caught.value)


# ------------------------------------------------------------------------------ secrets in repr


def test_repr_never_contains_the_api_key() -> None:
    settings = Settings.from_env({"DATAFAST_API_KEY": API_KEY, "DATAFAST_WEBSITE_ID": "site_1"})
    assert API_KEY not in repr(settings)
    assert API_KEY not in str(settings)
    assert "site_1" in repr(settings)


def test_key_fingerprint_tells_keys_apart_without_showing_them() -> None:
    keys = [API_KEY, API_KEY + "x", "df_other", "dft_account_token"]
    prints = [Settings(api_key=key).key_fingerprint for key in keys]
    # Then each key has its own, stable fingerprint ...
    assert len(set(prints)) == len(keys)
    assert prints[0] == Settings(api_key=API_KEY).key_fingerprint
    # ... which is short and never contains the key
    for key, fingerprint in zip(keys, prints, strict=True):
        assert 8 <= len(fingerprint) <= 64
        assert key not in fingerprint
        assert key[3:] not in fingerprint


def test_no_key_has_a_fingerprint_too() -> None:
    assert Settings().key_fingerprint != Settings(api_key=API_KEY).key_fingerprint


def test_the_fingerprint_tells_api_urls_apart() -> None:
    # Given the same key sent to two URLs (one redirects or fails TLS, one is fixed)
    wrong = Settings(api_key=API_KEY, api_url="https://datafast.example/api/v1/goals")
    fixed = Settings(api_key=API_KEY)
    # Then their fingerprints differ, so a worker with the fixed URL drops the old pause
    assert wrong.key_fingerprint != fixed.key_fingerprint


# ------------------------------------------------------------------------- unknown attempts


def test_unknown_attempts_default_to_three_and_are_read() -> None:
    assert Settings().max_unknown_attempts == 3
    env = {"GOALQUEUE_MAX_UNKNOWN_ATTEMPTS": " 5 "}
    assert Settings.from_env(env).max_unknown_attempts == 5


@pytest.mark.parametrize("raw", ["0", "-1", "101", "two", "1.5"])
def test_bad_unknown_attempts_are_refused_naming_the_variable(raw: str) -> None:
    assert "GOALQUEUE_MAX_UNKNOWN_ATTEMPTS" in config_error({"GOALQUEUE_MAX_UNKNOWN_ATTEMPTS": raw})


# ---------------------------------------------------------------------------- dead letters


def test_dead_letters_are_kept_up_to_100000_and_30_days_by_default_and_read() -> None:
    # Given no setting, Then 100,000 letters for 30 days
    assert (Settings().dead_max, Settings().dead_retention_days) == (100_000, 30.0)
    # Given both set, Then they are read, the retention in days (fractions allowed)
    env = {"GOALQUEUE_DEAD_MAX": " 500 ", "GOALQUEUE_DEAD_RETENTION_DAYS": "0.5"}
    settings = Settings.from_env(env)
    assert (settings.dead_max, settings.dead_retention_seconds) == (500, 43_200.0)


@pytest.mark.parametrize(
    ("var", "raw", "says"),
    [
        ("GOALQUEUE_DEAD_MAX", "0", "from 1 to 100,000,000"),
        ("GOALQUEUE_DEAD_MAX", "100000001", "from 1 to 100,000,000"),
        ("GOALQUEUE_DEAD_MAX", "1e5", "a whole number"),
        ("GOALQUEUE_DEAD_RETENTION_DAYS", "0", "a positive number of days"),
        ("GOALQUEUE_DEAD_RETENTION_DAYS", "-3", "a positive number of days"),
        ("GOALQUEUE_DEAD_RETENTION_DAYS", "inf", "a positive number of days"),
        ("GOALQUEUE_DEAD_RETENTION_DAYS", "a month", "a number of days"),
    ],
)
def test_bad_dead_letter_limits_are_refused_naming_the_variable(
    var: str, raw: str, says: str
) -> None:
    message = config_error({var: raw})
    assert message.startswith(var) and says in message
