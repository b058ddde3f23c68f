"""Settings for tests: sub-second waits, the sandbox's API key, the default namespace's keys."""

from __future__ import annotations

from goalqueue.config import Settings
from goalqueue.keys import Keys

API_KEY = "df_sandbox"
KEYS = Keys()
"""The default namespace's keys, which the tests' settings use."""


def quick_settings(broker_url: str) -> Settings:
    """Settings with sub-second waits, pointed at a closed port until a test sets a URL."""
    return Settings(
        broker_url=broker_url,
        api_key=API_KEY,
        api_url="http://127.0.0.1:9/api/v1/goals",
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        http_timeout_seconds=1.0,
        visibility_timeout_seconds=5.0,
        sweep_interval_seconds=0.1,
    )
