"""Settings for the temporary Prefect server a flow command starts when none is configured."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Prefect's server setting for its anonymous usage heartbeat (prefect.server.services.telemetry).
ANALYTICS_SETTING = "PREFECT_SERVER_ANALYTICS_ENABLED"


def quiet_ephemeral_server(environ: MutableMapping[str, str] = os.environ) -> None:
    """Turn off the temporary server's telemetry heartbeat, unless the user set it.

    Why: with no ``PREFECT_API_URL``, a flow run starts a throwaway Prefect server on
    SQLite, in a subprocess that inherits this environment. Its telemetry service writes
    to that database on a timer; while training keeps the machine busy the write can
    meet the flow's own writes and log a ``database is locked`` traceback (the same lock
    as PrefectHQ/prefect#15170, in another service). The run is unaffected, but a
    traceback in a successful run reads as a failure, and a server that lives for one
    run has nothing to report. A real server is configured on its own side and is not
    touched; an explicit choice in the environment wins.
    """
    environ.setdefault(ANALYTICS_SETTING, "false")
