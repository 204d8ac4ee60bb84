"""A study's runs on a Prefect work pool: one ``agegap-experiment`` flow run per missing
experiment, on whichever workers take them, and the experiments pulled back.

Prefect schedules and runs; DVC's git and data remotes carry the results. Nothing
here queues or transports anything itself: it submits with ``run_deployment``, reads
flow run states, resubmits a run that failed or crashed (a worker that dies leaves its
run ``Crashed`` once the zombie automation in prefect/ sees its heartbeats stop) a
bounded number of times, and ends with ``dvc exp pull``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agegap.errors import AgegapError
from flows.dvc_commands import run_dvc
from flows.git_commands import git, head_commit
from flows.study_plan import PlannedRun

DEPLOYMENT = "agegap-experiment/study"


@dataclass
class PoolOutcome:
    """What became of a study's runs on the pool: the flow runs each took, and why the
    ones that never succeeded failed."""

    flow_runs: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def check_commit_is_shared(root: Path, git_remote: str) -> str:
    """HEAD, once it is known to be on ``git_remote``: workers can only check out a
    commit they can fetch. A one-line error says to push it first."""
    commit = head_commit(root)
    git(root, "fetch", "--quiet", git_remote)
    if not git(root, "branch", "--remotes", "--contains", commit):
        raise AgegapError(
            f"commit {commit[:12]} is not on git remote {git_remote!r}: push it first "
            "(`git push`, and `dvc push --run-cache` for the data stages' outputs)"
        )
    return commit


def pull_experiments(root: Path, git_remote: str, names: list[str] | None = None) -> None:
    """``dvc exp pull``: the named experiments of HEAD (all of them when None), with
    their cached outputs, from ``git_remote`` and the DVC remote."""
    if names == []:
        return
    run_dvc(["exp", "pull", "--force", git_remote, *(names or ["--rev", "HEAD"])], root)


def run_on_pool(
    runs: list[PlannedRun],
    *,
    commit: str,
    git_remote: str,
    deployment: str,
    jobs: int,
    attempts: int,
    timeout_s: float,
    log: Callable[[str], Any],
    tags: list[str],
    poll_s: float = 5.0,
) -> PoolOutcome:
    """Submit each run as a flow run of ``deployment``, at most ``jobs`` at a time, and
    wait; a run whose flow run fails, crashes or is cancelled is submitted again, up to
    ``attempts`` flow runs in all."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    outcome = PoolOutcome()
    pending = list(runs)
    in_flight: dict[Any, PlannedRun] = {}
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment)
        except Exception as error:
            raise AgegapError(
                f"deployment {deployment}: not found on the Prefect server ({error}); "
                "create it with `prefect deploy --name study`"
            ) from None
        try:
            while pending or in_flight:
                while pending and len(in_flight) < jobs:
                    run = pending.pop(0)
                    tries = outcome.flow_runs.setdefault(run.name, [])
                    submitted = run_deployment(
                        deployment,
                        parameters={"name": run.name, "overrides": run.overrides,
                                    "commit": commit, "git_remote": git_remote},
                        flow_run_name=f"{run.name} (try {len(tries) + 1})",
                        tags=tags,
                        timeout=0,
                    )
                    tries.append(str(submitted.id))
                    in_flight[submitted.id] = run
                    log(f"{run.name}: submitted as flow run {submitted.id} (try {len(tries)})")
                time.sleep(poll_s)
                for flow_run_id, run in list(in_flight.items()):
                    state = client.read_flow_run(flow_run_id).state
                    if state is None or not state.is_final():
                        continue
                    del in_flight[flow_run_id]
                    if state.is_completed():
                        log(f"{run.name}: done")
                        continue
                    why = f"{state.name}: {state.message or 'no message'}"
                    if len(outcome.flow_runs[run.name]) < attempts:
                        log(f"{run.name}: flow run {flow_run_id} ended {why}; trying again")
                        pending.insert(0, run)
                    else:
                        outcome.failures[run.name] = (
                            f"{len(outcome.flow_runs[run.name])} flow runs, the last {why}"
                        )
                        log(f"{run.name}: gave up: {outcome.failures[run.name]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the study ran past {timeout_s:.0f} s")
        except BaseException as error:
            # Interrupted or out of time: what was submitted must not run on unwatched.
            for flow_run_id, run in in_flight.items():
                _cancel(client, flow_run_id)
                outcome.failures[run.name] = f"cancelled: {error or type(error).__name__}"
            if not isinstance(error, TimeoutError):
                raise
            for run in pending:
                outcome.failures[run.name] = "not submitted: the study ran out of time"
    return outcome


def _cancel(client: Any, flow_run_id: Any) -> None:
    from prefect.states import Cancelling

    try:
        client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
    except Exception:  # cancelling is best effort; the failure is already recorded
        return
