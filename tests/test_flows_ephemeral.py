"""The temporary Prefect server a flow run starts by itself: no telemetry heartbeat."""

from __future__ import annotations

import pytest

# First: it points Prefect at a temporary home before anything imports prefect.
from tests.prefect_fixtures import PREFECT_TEST_ENV

# isort: split
from flows.ephemeral import ANALYTICS_SETTING, quiet_ephemeral_server


def test_the_heartbeat_is_off_unless_the_user_chose() -> None:
    """Under training's load it logged 'database is locked' tracebacks in runs that passed."""
    environ: dict[str, str] = {"PREFECT_HOME": "/somewhere"}
    quiet_ephemeral_server(environ)
    assert environ == {"PREFECT_HOME": "/somewhere", ANALYTICS_SETTING: "false"}
    chosen = {ANALYTICS_SETTING: "true"}
    quiet_ephemeral_server(chosen)
    assert chosen == {ANALYTICS_SETTING: "true"}


@pytest.mark.parametrize(("value", "enabled"), [("false", False), ("true", True)])
def test_the_variable_is_the_one_prefects_server_reads(
    monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    """A renamed setting in a later Prefect would silently bring the tracebacks back."""
    from prefect.settings import Settings

    assert PREFECT_TEST_ENV[ANALYTICS_SETTING] == "false"  # the tests' server: off as well
    monkeypatch.setenv(ANALYTICS_SETTING, value)
    assert Settings().server.analytics_enabled is enabled
