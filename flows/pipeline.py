"""The ``agegap-pipeline`` flow: the DVC stages as Prefect tasks, and a CLI to run or serve it.

``python -m flows.pipeline run`` runs it once, ``serve`` on a schedule (docs/orchestration.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.tasks import exponential_backoff

from agegap.errors import AgegapError, exits_cleanly
from agegap.layout import METRICS
from flows import artifacts
from flows.dvc_commands import (
    NOT_RUN,
    RAN,
    RESTORED,
    SKIPPED,
    DvcCommandError,
    experiment_args,
    experiment_name,
    run_dvc,
    stage_order,
    validate_overrides,
    workspace_lock,
    workspace_root,
)
from flows.ephemeral import quiet_ephemeral_server

FLOW_NAME = "agegap-pipeline"
DEPLOYMENT_NAME = "nightly"
DEFAULT_CRON = "0 3 * * *"
# Stages whose failures are usually transient (the network): retried with backoff.
RETRIED_STAGES = frozenset({"download"})
DOWNLOAD_PARAMS = frozenset({"data_url", "data_sha256"})
RETRY_BACKOFF_SECONDS = 10.0
# Generous bounds that still catch a hung stage.
STAGE_TIMEOUTS_S: dict[str, float] = {"download": 3600.0, "train": 12 * 3600.0}
DEFAULT_STAGE_TIMEOUT_S = 3600.0


def _log_line(line: str) -> None:
    """One line of DVC's output into the run's log; error lines at ERROR level."""
    logger = get_run_logger()
    if line.lstrip().lower().startswith("error"):
        logger.error(line)
    else:
        logger.info(line)


def _run_dvc_logged(args: list[str], workspace: str, timeout_s: float, what: str):
    """Run one DVC command with its output in the run's log; fail the task with DVC's error."""
    result = run_dvc(args, Path(workspace), on_line=_log_line, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise DvcCommandError(
            f"{what} failed (dvc exited with {result.returncode}):\n" + result.error_summary()
        )
    return result


@task(name="dvc-stage", cache_policy=NO_CACHE)
def run_stage(workspace: str, stage: str, timeout_s: float) -> Any:
    """Ask DVC to bring one stage up to date: ``dvc repro --single-item <stage>``.

    ``--single-item`` because the flow already walks the graph in order; DVC then
    runs the stage only if its deps, params or outs changed. No Prefect caching
    (NO_CACHE): DVC's lock file is the only cache, so the two never disagree. A stage
    DVC said it skipped finishes in a ``Skipped`` (Completed) state, visible in the UI;
    one restored from DVC's run cache, or about which DVC's words are not recognised,
    counts as run (:meth:`DvcRun.stage_outcome`).
    """
    result = _run_dvc_logged(
        ["repro", "--single-item", stage], workspace, timeout_s, f"stage {stage!r}"
    )
    outcome = result.stage_outcome(stage)
    row = {"stage": stage, "outcome": outcome, "seconds": round(result.seconds, 1)}
    if outcome == SKIPPED:
        return Completed(name="Skipped", message=f"stage {stage!r} didn't change", data=row)
    return row


@task(name="dvc-exp-run", cache_policy=NO_CACHE)
def run_experiment(
    workspace: str, name: str, overrides: dict[str, Any], timeout_s: float
) -> list[dict[str, Any]]:
    """Run the whole pipeline as the named experiment ``name`` with ``overrides`` applied.

    One ``dvc exp run`` rather than one task per stage: an experiment is one
    versioned unit (one git ref); splitting it would make several experiments.
    """
    result = _run_dvc_logged(
        experiment_args(name, overrides), workspace, timeout_s, f"experiment {name!r}"
    )
    return [
        {"stage": stage, "outcome": outcome, "seconds": None}
        for stage, outcome in result.stage_outcomes().items()
    ]


@flow(
    name=FLOW_NAME,
    description="The agegap DVC pipeline, stage by stage, DVC deciding what is up to date.",
)
def pipeline(
    workspace: str = ".",
    overrides: dict[str, Any] | None = None,
    experiment: str | None = None,
    download_retries: int = 2,
    stage_timeouts: dict[str, float] | None = None,
    diff_against: str = "HEAD",
) -> dict[str, Any]:
    """Bring the pipeline up to date (or run an experiment) and return ``metrics.json``.

    Args:
        workspace: the DVC repository to run in (its root, where dvc.yaml is).
        overrides: parameter values for a DVC experiment (``dvc exp run -S``); None
            runs ``dvc repro`` on params.yaml as it is.
        experiment: the experiment's name; default derived from the flow run's name.
        download_retries: retries of the download stage, with exponential backoff.
        stage_timeouts: seconds per stage name, on top of STAGE_TIMEOUTS_S.
        diff_against: the commit the published ``dvc metrics diff`` compares with.
    """
    logger = get_run_logger()
    root = workspace_root(workspace)
    # Fail before any work: the same validation, and message, as the train stage.
    validate_overrides(root, {} if overrides is None else overrides)
    timeouts = {**STAGE_TIMEOUTS_S, **(stage_timeouts or {})}
    with workspace_lock(root, on_wait=logger.info):
        stages = stage_order(root)
        logger.info("stages in dependency order: %s", ", ".join(stages))
        if overrides is None:
            outcomes = _reproduce(root, stages, timeouts, download_retries)
        else:
            outcomes = _experiment(root, stages, overrides, experiment, timeouts, download_retries)
        metrics = read_metrics(root)
        description = f"metrics.json of {root}" + (
            f" (experiment with {json.dumps(overrides)})" if overrides is not None else ""
        )
        artifacts.publish_stages(outcomes)
        artifacts.publish_metrics(metrics, description)
        artifacts.publish_metrics_diff(root, diff_against)
        artifacts.publish_plots(root)
    ran = [row["stage"] for row in outcomes if row["outcome"] == RAN]
    restored = [row["stage"] for row in outcomes if row["outcome"] == RESTORED]
    skipped = [row["stage"] for row in outcomes if row["outcome"] == SKIPPED]
    logger.info(
        "ran: %s; skipped (up to date): %s%s",
        ", ".join(ran) or "none",
        ", ".join(skipped) or "none",
        f"; restored from DVC's run cache: {', '.join(restored)}" if restored else "",
    )
    return metrics


def _stage_timeout(stage: str, timeouts: Mapping[str, float]) -> float:
    return float(timeouts.get(stage, DEFAULT_STAGE_TIMEOUT_S))


def _run_stage_task(
    root: Path, stage: str, timeouts: Mapping[str, float], download_retries: int
) -> Any:
    """Run one stage's ``run_stage`` task, with its name, timeout and retries; its final state."""
    timeout = _stage_timeout(stage, timeouts)
    retries = max(0, download_retries) if stage in RETRIED_STAGES else 0
    task_ = run_stage.with_options(
        name=f"dvc-{stage}",
        task_run_name=stage,
        # Prefect's own timeout is a backstop: run_dvc stops the stage at ``timeout``.
        timeout_seconds=timeout + 30,
        retries=retries,
        retry_delay_seconds=exponential_backoff(RETRY_BACKOFF_SECONDS)(retries) if retries else 0,
        retry_jitter_factor=0.5 if retries else None,
    )
    return task_(str(root), stage, timeout, return_state=True)


def _reproduce(
    root: Path, stages: list[str], timeouts: Mapping[str, float], download_retries: int
) -> list[dict[str, Any]]:
    """Run the stages in order; on a failure, record it and re-raise the stage's error."""
    outcomes: list[dict[str, Any]] = []
    for index, stage in enumerate(stages):
        state = _run_stage_task(root, stage, timeouts, download_retries)
        if not state.is_completed():
            outcomes.append({"stage": stage, "outcome": "failed", "seconds": None})
            outcomes += [
                {"stage": s, "outcome": NOT_RUN, "seconds": None} for s in stages[index + 1 :]
            ]
            artifacts.publish_stages(outcomes)
            state.result()  # raises the stage's error, failing the flow run with its message
            raise DvcCommandError(f"stage {stage!r} ended in state {state.name}: {state.message}")
        outcomes.append(state.result())
    return outcomes


def _experiment(
    root: Path,
    stages: list[str],
    overrides: Mapping[str, Any],
    name: str | None,
    timeouts: Mapping[str, float],
    download_retries: int,
) -> list[dict[str, Any]]:
    """Run the pipeline as a named experiment; fetch the data first, with retries, if unchanged.

    The download is the only stage worth retrying and ``dvc exp run`` cannot retry one
    stage, so when the overrides leave the data alone it is brought up to date first
    by the retrying download task, and the experiment then finds it up to date.
    """
    from prefect.runtime import flow_run

    outcomes: list[dict[str, Any]] = []
    prefetch = (
        [s for s in stages if s in RETRIED_STAGES] if not DOWNLOAD_PARAMS & set(overrides) else []
    )
    for stage in prefetch:
        outcomes.append(_run_stage_task(root, stage, timeouts, download_retries).result())
    label = name or f"{flow_run.get_name() or 'agegap'}-{str(flow_run.get_id() or '')[:6]}"
    total = sum(_stage_timeout(s, timeouts) for s in stages)
    task_ = run_experiment.with_options(
        task_run_name=f"exp-{experiment_name(label)}", timeout_seconds=total + 30
    )
    rows = task_(str(root), experiment_name(label), dict(overrides), total)
    done = {row["stage"] for row in outcomes}
    return outcomes + [row for row in rows if row["stage"] not in done]


def read_metrics(root: Path) -> dict[str, Any]:
    """``metrics.json`` as the evaluate stage wrote it (a clear error if it is missing)."""
    path = root / METRICS
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgegapError(
            f"{path}: missing after the pipeline ran; is evaluate in dvc.yaml?"
        ) from None
    except json.JSONDecodeError as error:
        raise AgegapError(f"{path}: not valid JSON ({error})") from None


# --- deployment and command line -------------------------------------------------


def importable_flow() -> Any:
    """The flow as ``flows.pipeline.pipeline``, even when this file runs as ``__main__``.

    The deployment's entrypoint is a module path, so the process that runs a
    scheduled flow imports it the same way wherever it starts.
    """
    return importlib.import_module("flows.pipeline").pipeline


def build_deployment(
    workspace: str | Path = ".",
    *,
    cron: str | None = None,
    interval: float | None = None,
    overrides: dict[str, Any] | None = None,
    name: str = DEPLOYMENT_NAME,
    timezone: str = "UTC",
) -> Any:
    """The ``agegap-pipeline/<name>`` deployment to serve: schedule and parameters.

    The workspace is stored as an absolute path: a served run must find the DVC
    repository whatever folder the serving process's children start in.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    root = workspace_root(workspace)
    if overrides is not None:
        validate_overrides(root, overrides)
    if interval is not None and interval <= 0:
        raise AgegapError(f"--interval {interval}: expected a positive number of seconds")
    parameters: dict[str, Any] = {"workspace": str(root)}
    if overrides is not None:
        parameters["overrides"] = overrides
    try:
        if interval is not None:
            schedule = Interval(interval, timezone=timezone)
        else:
            schedule = Cron(cron or DEFAULT_CRON, timezone=timezone)
        return importable_flow().to_deployment(
            name=name,
            schedule=schedule,
            parameters=parameters,
            entrypoint_type=EntrypointType.MODULE_PATH,
            tags=["agegap", "dvc"],
            description=f"The agegap DVC pipeline in {root}, on a schedule.",
        )
    except ValueError as error:  # a bad cron string or timezone, checked by pydantic
        raise AgegapError(f"schedule: {_first_error(error)}") from None


def _first_error(error: ValueError) -> str:
    """The first validation message of a pydantic error, without its boilerplate."""
    details = getattr(error, "errors", None)
    if callable(details):
        with contextlib.suppress(Exception):
            return str(details()[0]["msg"]).removeprefix("Value error, ")
    return str(error).splitlines()[0]


def parse_overrides(text: str | None) -> dict[str, Any] | None:
    """``--overrides`` as a JSON object of parameter values (a one-line error otherwise)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise AgegapError(
            f"--overrides: not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    if not isinstance(value, dict):
        raise AgegapError('--overrides: expected a JSON object such as {"dropout": 0.3}')
    return value


def require_server() -> str:
    """The configured API URL; schedules need a real server, ephemeral mode runs none."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise AgegapError(
            "PREFECT_API_URL is not set: schedules need a Prefect server (ephemeral mode runs "
            "no scheduler). Start one with `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run the pipeline once, now")
    serve_cmd = commands.add_parser("serve", help="serve the agegap-pipeline/nightly deployment")
    for command in (run_cmd, serve_cmd):
        command.add_argument("--workspace", default=".", help="the DVC repository (default: .)")
        command.add_argument(
            "--overrides",
            help="JSON object of params for a DVC experiment, e.g. '{\"dropout\": 0.3}'",
        )
    run_cmd.add_argument("--name", help="experiment name (with --overrides)")
    when = serve_cmd.add_mutually_exclusive_group()
    when.add_argument("--cron", help=f'cron schedule (default "{DEFAULT_CRON}")')
    when.add_argument("--interval", type=float, help="run every SECONDS instead of a cron schedule")
    serve_cmd.add_argument(
        "--timezone", default="UTC", help="timezone of the cron schedule (default UTC)"
    )
    serve_cmd.add_argument(
        "--deployment-name", default=DEPLOYMENT_NAME, help=f"default {DEPLOYMENT_NAME}"
    )
    serve_cmd.add_argument(
        "--limit", type=int, default=1, help="flow runs at once (default 1: they share a workspace)"
    )
    return parser


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flows.pipeline``; bad input is one line and exit 1."""
    options = _parser().parse_args(argv)
    overrides = parse_overrides(options.overrides)
    if options.command == "serve":
        from prefect import serve

        url = require_server()
        deployment = build_deployment(
            options.workspace,
            cron=options.cron,
            interval=options.interval,
            overrides=overrides,
            name=options.deployment_name,
            timezone=options.timezone,
        )
        print(f"serving {FLOW_NAME}/{options.deployment_name} against {url}", file=sys.stderr)
        # One run at a time by default: runs of one workspace queue on its lock anyway.
        serve(deployment, limit=options.limit)
        return 0
    root = workspace_root(options.workspace)
    if overrides is not None:
        validate_overrides(root, overrides)
    quiet_ephemeral_server()
    state = importable_flow()(
        workspace=str(root), overrides=overrides, experiment=options.name, return_state=True
    )
    if not state.is_completed():
        raise AgegapError(f"flow run failed: {state.message}")
    print(json.dumps(state.result(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
