"""A real Prefect server and real processes for tests: started on free local ports, in
their own sessions, and always stopped with everything they started.

Import :mod:`tests.prefect_fixtures` first (it points Prefect at a temporary home).
"""

from __future__ import annotations

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
from tests.prefect_fixtures import PREFECT_TEST_ENV

SERVER_START_S = 90.0


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


@contextlib.contextmanager
def prefect_server(folder: Path) -> Iterator[tuple[str, Path]]:
    """``prefect server start`` on a free port with its home in ``folder``; yields its API
    URL and that home, once healthy. A server that does not start fails the test."""
    import httpx

    home = folder / "prefect-home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    prefect = str(Path(sys.executable).parent / "prefect")
    args = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--no-ui", "--analytics-off"]
    log = folder / "server.log"
    with started(args, folder, server_env(home, None), log):
        healthy = wait_for(
            lambda: httpx.get(f"{api_url}/health", timeout=2).status_code == 200,
            SERVER_START_S,
        )
        if not healthy:
            text = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"prefect server did not start within {SERVER_START_S:.0f} s:\n{text}")
        yield api_url, home
