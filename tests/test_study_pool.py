"""A study on two real Prefect workers, sharing a git remote and a DVC remote, one of
them killed in the middle of a run.

Every part is the real one a user runs (docs/orchestration.md): ``prefect server
start`` on a free port, a ``process`` work pool, ``prefect deploy --name study`` from
prefect.yaml, the zombie automation of prefect-automations.yaml (heartbeats every 30 s
and 90 s of silence instead of 180 and 600, so a dead run is seen in time), two
``prefect worker start`` processes each in its own clone, a bare git repository as the
git remote and a local folder as the DVC remote. The coordinating clone runs
``python -m flows.experiments pair --pool``: first for seed 0 (each worker runs one of
its two runs), then for the whole study (seed 1's two runs are missing; worker 1 is
killed in the middle of its one, which the other worker then runs), then once more
(nothing is missing: nothing is submitted).
"""

from __future__ import annotations

# First: it points Prefect at a temporary home before anything imports prefect.
from tests.prefect_fixtures import PREFECT_TEST_ENV  # noqa: F401 - imported first, for its effect

# isort: split
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from flows.study_plan import load_study, plan_runs
from tests.conftest import run
from tests.live_prefect import prefect_server, server_env, started, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

POOL = "agegap-studies"
STUDY = {
    "seeds": [0, 1],
    "split_strategies": ["image"],
    "set": {"epochs": 1},
    "rows": [{"name": "a", "set": {"dropout": 0.5}}, {"name": "b", "set": {"dropout": 0.2}}],
}


def experiment_refs(clone: Path) -> list[str]:
    """The experiments a clone made or pulled (DVC keeps them as git refs)."""
    listed = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                            cwd=clone, capture_output=True, text=True)
    return [line for line in listed.stdout.splitlines() if line.strip()]


def running_experiment(worker: subprocess.Popen[bytes]) -> bool:
    """Whether one of the worker's descendants is a ``dvc exp run`` at work."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(worker.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "exp" in (line := child.cmdline()) and "run" in line:
                    return True
    return False


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker, its process group and every process under it: a machine lost."""
    tree = psutil.Process(process.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait(timeout=10)


def test_a_study_on_two_workers_survives_a_killed_worker(
    tmp_path: Path, synthetic_zip: Any, make_project: Callable[..., Path]
) -> None:
    from prefect.client.orchestration import SyncPrefectClient

    # The coordinating clone: the study, the data stages pushed to both remotes.
    coordinator = make_project(synthetic_zip.path, name="coordinator")
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], coordinator)
    run(["dvc", "remote", "add", "--default", "storage", str(storage)], coordinator)
    (coordinator / "studies" / "pair.yaml").write_text(yaml.safe_dump(STUDY), encoding="utf-8")
    run(["dvc", "repro", "average_faces"], coordinator)
    run(["git", "add", "-A"], coordinator)
    run(["git", "commit", "-q", "-m", "a study and its data stages"], coordinator)
    run(["git", "push", "-q", "origin", "main"], coordinator)
    run(["dvc", "push", "--run-cache"], coordinator)
    clones = [tmp_path / "worker-1", tmp_path / "worker-2"]
    for clone in clones:
        run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    study = load_study(coordinator / "studies" / "pair.yaml")
    names = sorted(r.name for r in plan_runs(study, study.rows))

    with prefect_server(tmp_path) as (api_url, home):
        env = {**server_env(home, api_url), "PREFECT_WORKER_QUERY_SECONDS": "2",
               "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
        env.pop("AGEGAP_WORKER_CLONE", None)
        prefect = str(Path(sys.executable).parent / "prefect")

        def cli(*args: str, cwd: Path = coordinator) -> str:
            done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            return done.stdout

        cli(prefect, "work-pool", "create", POOL, "--type", "process")
        cli(prefect, "deploy", "--name", "study", "--no-prompt")
        automation = yaml.safe_load((coordinator / "prefect-automations.yaml").read_text())
        automation["automations"][0]["trigger"]["within"] = 90
        quick = tmp_path / "automation.yaml"
        quick.write_text(yaml.safe_dump(automation), encoding="utf-8")
        cli(prefect, "automation", "create", "--from-file", str(quick))

        def worker(index: int) -> Any:
            args = [prefect, "worker", "start", "--pool", POOL, "--limit", "1",
                    "--name", f"worker-{index}"]
            clone = clones[index - 1]
            own = {**env, "AGEGAP_WORKER_CLONE": str(clone)}
            return started(args, clone, own, tmp_path / f"worker-{index}.log")

        study_args = [sys.executable, "-m", "flows.experiments", "pair", "--pool",
                      "--jobs", "2", "--attempts", "3"]

        def coordinate(*extra: str, during: Callable[[], None] | None = None) -> str:
            """Run the study command; ``during`` acts while it runs. Its output."""
            with (tmp_path / "study.log").open("wb") as out:
                process = subprocess.Popen([*study_args, *extra], cwd=coordinator, env=env,
                                           stdout=out, stderr=subprocess.STDOUT)
            try:
                if during is not None:
                    during()
                process.wait(timeout=420)
            finally:
                if process.poll() is None:
                    process.kill()
            log = (tmp_path / "study.log").read_text(errors="replace")
            assert process.returncode == 0, log[-4000:]
            return log

        with worker(1) as first, worker(2), SyncPrefectClient(api_url) as client:
            # Seed 0 alone: two runs, two idle workers that take one run at a time, so
            # each worker runs one.
            coordinate("--seeds", "0")
            for clone in clones:
                assert len(experiment_refs(clone)) == 1, f"{clone.name} ran nothing"

            def kill_worker_1_mid_run() -> None:
                assert wait_for(lambda: running_experiment(first), 240, every=0.5), \
                    (tmp_path / "worker-1.log").read_text(errors="replace")[-3000:]
                time.sleep(3)
                kill_tree(first)

            # The whole study: seed 1's two runs, worker 1 killed in the middle of its one.
            log = coordinate(during=kill_worker_1_mid_run)
            assert "4 runs (4 distinct), 2 already done, 2 to run" in log

            deployment = client.read_deployment_by_name("agegap-experiment/study")

            def experiment_flow_runs() -> list[Any]:
                return [r for r in client.read_flow_runs() if r.deployment_id == deployment.id]

            flow_runs = experiment_flow_runs()
            by_name: dict[str, list[Any]] = {}
            for flow_run in flow_runs:
                by_name.setdefault(flow_run.parameters["name"], []).append(flow_run)
            assert sorted(by_name) == names
            retried = {n: [r.state.name for r in rs] for n, rs in by_name.items() if len(rs) > 1}
            assert len(retried) == 1 and len(flow_runs) == 5, retried
            (states,) = retried.values()
            assert "Crashed" in states and "Completed" in states, states

            # Every experiment is back in the coordinating clone with its metrics.
            shown = run(["dvc", "exp", "show", "--json"], coordinator).stdout
            assert all(name in shown for name in names)
            report = (coordinator / ".studies" / "pair.md").read_text(encoding="utf-8")
            assert "| cpu | image | a | 1 | 2 (0, 1) |" in report
            assert "| cpu | image | b | 1 | 2 (0, 1) |" in report

            # Run again, the finished study submits nothing.
            again = coordinate()
            assert "4 already done, 0 to run" in again
            assert len(experiment_flow_runs()) == len(flow_runs)
