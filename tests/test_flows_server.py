"""A real ``prefect server start``, a served schedule, and a scheduled run that completes.

This is the path a user takes (docs/orchestration.md), so it runs the same commands:
the server on 127.0.0.1 (a free port, a temporary ``PREFECT_HOME``), then
``python -m flows.pipeline serve --interval 5`` with ``PREFECT_API_URL`` pointing at
it. Everything started is stopped, process tree included, within a bounded time.
"""

from __future__ import annotations

# First: it points Prefect at a temporary home before anything imports prefect.
from tests.prefect_fixtures import PREFECT_TEST_ENV  # noqa: F401 - imported first, for its effect

# isort: split
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.live_prefect import prefect_server, server_env, started, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

RUN_COMPLETE_S = 240.0


def test_served_schedule_runs_to_completion_on_a_real_server(
    tmp_path: Path, synthetic_zip: Any, make_project: Callable[..., Path]
) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    project = make_project(synthetic_zip.path, epochs=1)

    with prefect_server(tmp_path) as (api_url, home):
        serve_args = [sys.executable, "-m", "flows.pipeline", "serve", "--interval", "5"]
        serve_log = tmp_path / "serve.log"
        with (
            started(serve_args, project, server_env(home, api_url), serve_log),
            SyncPrefectClient(api_url) as client,
        ):
            only_ours = DeploymentFilter(name=DeploymentFilterName(any_=["nightly"]))

            def finished_run() -> Any:
                runs = client.read_flow_runs(deployment_filter=only_ours)
                return next((r for r in runs if r.state and r.state.is_final()), None)

            run = wait_for(finished_run, RUN_COMPLETE_S, every=3.0)
            output = serve_log.read_text(errors="replace")[-3000:]
            assert run is not None, (
                f"no scheduled run finished in {RUN_COMPLETE_S:.0f} s:\n{output}"
            )
            assert run.state.is_completed(), f"{run.state.message}\n{output}"
            deployment = client.read_deployment_by_name("agegap-pipeline/nightly")
            assert run.deployment_id == deployment.id
            assert run.auto_scheduled  # started by the schedule, not by hand
            assert deployment.parameters == {"workspace": str(project)}
            assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == [5.0]
    assert (project / "metrics.json").is_file()
