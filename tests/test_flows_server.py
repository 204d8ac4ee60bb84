"""A real ``prefect server start``, a served schedule, and a scheduled run that completes.

This is the path a user takes (docs/orchestration.md), so it runs the same commands:
the server on 127.0.0.1 (a free port, a temporary ``PREFECT_HOME``), then
``python -m flows.pipeline serve --interval 5`` with ``PREFECT_API_URL`` pointing at
it. Everything started is stopped, process tree included, within a bounded time.
"""

from __future__ import annotations

# First: it points Prefect at a temporary home before anything imports prefect.
from tests.prefect_fixtures import PREFECT_TEST_ENV

# isort: split
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import project_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SERVER_START_S = 90.0
RUN_COMPLETE_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: Path, api_url: str | None) -> dict[str, str]:
    """The children's environment: the project on the path, Prefect in ``home``."""
    env = {**project_env(), **PREFECT_TEST_ENV, "PREFECT_HOME": str(home)}
    env["PREFECT_PROFILES_PATH"] = str(home / "profiles.toml")
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop ``process`` and every process under it (flow runs, DVC, stages)."""
    import psutil

    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(tree, timeout=10)


@contextlib.contextmanager
def started(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[Any]:
    """A background process in its own session, its output in ``log``; always stopped."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop(process)


def wait_for(check: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    """Poll ``check`` until it returns something truthy, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := check():
                return value
        time.sleep(every)
    return None


def test_served_schedule_runs_to_completion_on_a_real_server(
    tmp_path: Path, synthetic_zip: Any, make_project: Callable[..., Path]
) -> None:
    import httpx
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    project = make_project(synthetic_zip.path, epochs=1)
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect = str(Path(sys.executable).parent / "prefect")
    server_args = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server_args += ["--no-ui", "--analytics-off"]

    with started(server_args, tmp_path, server_env(home, None), tmp_path / "server.log"):
        healthy = wait_for(
            lambda: httpx.get(f"{api_url}/health", timeout=2).status_code == 200,
            SERVER_START_S,
        )
        if not healthy:
            log = (tmp_path / "server.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"prefect server did not start within {SERVER_START_S:.0f} s:\n{log}")

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
