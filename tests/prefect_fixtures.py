"""Prefect for tests: one temporary API server per session, nothing written to ~/.prefect.

Import this module before anything imports ``prefect``: Prefect reads ``PREFECT_HOME``
and its telemetry switches from the environment when its settings are first built,
so they are set here, at import time, to a temporary folder and "off". Test modules
use it with ``from tests.prefect_fixtures import prefect_harness  # noqa: F401``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.ephemeral import ANALYTICS_SETTING  # imports no prefect

_HOME = Path(tempfile.mkdtemp(prefix="agegap-prefect-home-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

# A fresh home per session: no cached results, profiles or databases leak between runs.
PREFECT_TEST_ENV: dict[str, str] = {
    "PREFECT_HOME": str(_HOME),
    "PREFECT_PROFILES_PATH": str(_HOME / "profiles.toml"),
    ANALYTICS_SETTING: "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "INFO",
}
os.environ.update(PREFECT_TEST_ENV)
# A developer's own server must not receive the tests' runs.
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)


_RUNNING: dict[str, str] = {}


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """One temporary Prefect API server (SQLite in a temporary folder) for the whole session.

    Yields its API URL, for the tests that read runs back with the client. Each test
    module imports this fixture, which makes one fixture per module for pytest; the
    first one to run starts the server and the others reuse it, so a session starts
    one server, not one per module.
    """
    if "url" in _RUNNING:
        yield _RUNNING["url"]
        return
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    # Again as settings, in case another module imported prefect before this one.
    home = {PREFECT_HOME: _HOME, PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with temporary_settings(updates=home), prefect_test_harness(server_startup_timeout=120):
        _RUNNING["url"] = str(PREFECT_API_URL.value())
        try:
            yield _RUNNING["url"]
        finally:
            _RUNNING.clear()
