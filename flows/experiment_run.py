"""One experiment of a study, on a Prefect worker: the ``agegap-experiment`` flow.

A worker runs it in its own clone of the repository (``AGEGAP_WORKER_CLONE``, where
prefect.yaml's pull step enters): it checks out the study's commit from the git remote,
runs ``dvc exp run --temp --pull`` (the data stages' outputs come from the DVC remote
or its run-cache instead of being recomputed), and pushes the experiment with
``dvc exp push``: params, metrics and curves to the git remote, the model and data to
the DVC remote. Why this shape, and how to start workers: docs/orchestration.md.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from agegap.errors import AgegapError
from flows.dvc_commands import (
    exp_show,
    experiment_args,
    run_dvc,
    workspace_lock,
    workspace_root,
)
from flows.git_commands import git
from flows.study_report import experiments_of

WORKER_CLONE = "AGEGAP_WORKER_CLONE"
METRIC_FILES = ("metrics.json", "train_metrics.json")


def check_out(root: Path, git_remote: str, commit: str) -> None:
    """The study's commit, fetched from ``git_remote`` and checked out, whatever this
    clone held before (a clone is a worker's own: nothing of value is lost)."""
    git(root, "fetch", "--quiet", git_remote)
    git(root, "checkout", "--quiet", "--force", "--detach", commit)


def remote_experiments(root: Path, git_remote: str) -> set[str]:
    """Names of the experiments of the checked-out commit that ``git_remote`` holds."""
    listed = run_dvc(["exp", "list", git_remote, "--name-only"], root)
    return {line.strip() for line in listed.lines if line.strip()}


def experiment_metrics(root: Path, name: str) -> dict[str, Any]:
    """The metrics files of experiment ``name``, from ``dvc exp show``."""
    for rev in experiments_of(exp_show(root)):
        if rev["name"] == name:
            metrics = rev["data"].get("metrics") or {}
            return {path: (metrics.get(path) or {}).get("data") for path in METRIC_FILES}
    raise AgegapError(f"experiment {name} is not in `dvc exp show` of {root}")


@flow(name="agegap-experiment", description="One experiment of a study, pushed to the remotes.")
def run_experiment(
    name: str,
    overrides: dict[str, Any],
    commit: str,
    git_remote: str = "origin",
    dvc_remote: str | None = None,
    workspace: str | None = None,
) -> dict[str, Any]:
    """Run experiment ``name`` (``overrides`` on ``commit``) here and push it.

    An experiment the git remote already holds (a retry after its push) is pulled,
    not run again. Returns its metrics, with where it ran.
    """
    logger = get_run_logger()
    root = workspace_root(workspace or os.environ.get(WORKER_CLONE) or ".")
    cache = ["--remote", dvc_remote] if dvc_remote else []
    with workspace_lock(root, on_wait=logger.info):
        check_out(root, git_remote, commit)
        if name in remote_experiments(root, git_remote):
            logger.info("%s is already on %s: pulled, not run again", name, git_remote)
            run_dvc(["exp", "pull", "--force", git_remote, name, *cache], root)
        else:
            args = experiment_args(name, overrides)
            args[2:2] = ["--temp", "--pull"]
            run_dvc(args, root, on_line=logger.info)
            # --force: a run declared dead that was not may push the same experiment
            # (same commit, same overrides) first; either copy is the run's result.
            run_dvc(["exp", "push", "--force", git_remote, name, *cache], root,
                    on_line=logger.info)
        metrics = experiment_metrics(root, name)
    ran_on = f"{socket.gethostname()}:{root}"
    test = metrics.get("metrics.json") or {}
    create_table_artifact(
        table=[{"experiment": name, "ran on": ran_on, **{k: v for k, v in test.items()
                                                         if isinstance(v, int | float)}}],
        key="agegap-experiment",
        description=f"{name} on {commit[:12]}",
    )
    return {"name": name, "commit": commit, "ran_on": ran_on, "metrics": metrics}
