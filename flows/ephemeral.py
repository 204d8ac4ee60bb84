"""Settings for the temporary Prefect server a flow command starts when none is configured."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Prefect's server setting for its anonymous usage heartbeat (prefect.server.services.telemetry).
ANALYTICS_SETTING = "PREFECT_SERVER_ANALYTICS_ENABLED"


def quiet_ephemeral_server(environ: MutableMapping[str, str] = os.environ) -> None:
    """Turn off the temporary server's telemetry heartbeat unless the environment sets it:
    its timed SQLite writes can log ``database is locked`` tracebacks in passing runs."""
    environ.setdefault(ANALYTICS_SETTING, "false")
