"""Run a study as DVC experiments and report it: ``python -m flows.experiments STUDY``.

A study (``studies/<name>.yaml``) is expanded into named runs; the runs that already
exist as experiments of this commit are kept, the missing ones run on DVC's queue
with several local workers (or, with ``--pool``, on Prefect workers of any number of
machines), and the report is made from ``dvc exp show`` alone. Format, options and
examples: docs/orchestration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from agegap.errors import AgegapError, exits_cleanly
from agegap.layout import TRAIN_RUN
from flows import exp_bundle
from flows.dvc_commands import exp_show, validate_overrides, workspace_lock, workspace_root
from flows.dvc_queue import failure_reason, queue_experiments, run_queue
from flows.ephemeral import quiet_ephemeral_server
from flows.git_commands import git, head_commit
from flows.pool_runs import DEPLOYMENT, check_commit_is_shared, pull_experiments, run_on_pool
from flows.study_plan import (
    STRATEGIES,
    PlannedRun,
    Study,
    check_folds,
    identity_of,
    load_study,
    plan_runs,
    runs_to_make,
    select_rows,
    study_path,
)
from flows.study_report import experiments_of, markdown, study_records, summarise, write_chart

# Not in git: a trial study never overwrites a committed report.
REPORT_DIR = ".studies"
TABLE_KEY = "agegap-study"
REPORT_KEY = "agegap-study-report"


def run_info(root: Path, revs: list[str]) -> dict[str, dict[str, Any]]:
    """Each experiment's ``train_run.json`` (speed, device, machine), read from its commit.

    A file DVC tracks for the run but not a metric, so ``exp show`` does not list it; a
    run without one (made before it existed) simply has no speed in the report.
    """
    info = {}
    for rev in revs:
        try:
            info[rev] = json.loads(git(root, "show", f"{rev}:{TRAIN_RUN.as_posix()}"))
        except (AgegapError, json.JSONDecodeError):
            continue
    return info


def finished_runs(shown: list[dict[str, Any]], runs: list[PlannedRun]) -> dict[str, str]:
    """Identity -> experiment name, for the study's runs that have a finished experiment
    on this commit."""
    planned = {run.identity for run in runs}
    return {
        identity: rev["name"]
        for rev in experiments_of(shown)
        if (identity := identity_of(rev["name"])) in planned
    }


def refuse_invalid(
    root: Path, runs: list[PlannedRun], log: Any
) -> tuple[list[PlannedRun], dict[str, str]]:
    """The runs whose overrides are valid, and why each other one is not: a bad row fails
    alone, before anything of it runs, with the train stage's own message."""
    valid, failures = [], {}
    for run in runs:
        try:
            validate_overrides(root, run.overrides)
            valid.append(run)
        except AgegapError as error:
            failures[run.name] = str(error)
            log.error("%s: not run: %s", run.name, error)
    return valid, failures


def default_jobs(experiments: int) -> int:
    """Parallel DVC workers: one per two cores (training itself uses several threads)."""
    return max(1, min(experiments, (os.cpu_count() or 2) // 2))


def keep_in_bundle(root: Path, bundle: str, runs: list[PlannedRun]) -> int:
    """Write the finished ones of ``runs`` to the bundle file (the runs it held already
    stay); how many experiments it holds."""
    finished = set(finished_runs(exp_show(root), runs).values())
    return exp_bundle.save(root, root / bundle, head_commit(root), finished)


@task(name="run-missing-experiments", cache_policy=NO_CACHE)
def run_missing(
    workspace: str, runs: list[PlannedRun], jobs: int, timeout_s: float,
    bundle: str | None = None,
) -> dict[str, str]:
    """Queue and run the valid runs given on DVC's queue; experiment name -> why it
    failed, for those that did. With a ``bundle``, each run is written to it as soon as
    it succeeds: an interrupted study loses none of its finished runs."""
    logger = get_run_logger()
    root = Path(workspace)

    def keep(succeeded: list[str]) -> None:
        kept = keep_in_bundle(root, bundle, runs) if bundle else 0
        logger.info("%s succeeded%s", ", ".join(succeeded),
                    f"; {bundle}: {kept} experiments kept" if bundle else "")

    valid, failures = refuse_invalid(root, runs, logger)
    refused = queue_experiments(root, {run.name: run.overrides for run in valid})
    for name, error in refused.items():
        failures[name] = error
        logger.error("%s: could not be queued: %s", name, error)
    queued = [run.name for run in valid if run.name not in refused]
    if queued:
        states = run_queue(root, queued, jobs, timeout_s, logger.info, on_success=keep)
        for name, state in states.items():
            if state != "Success":
                failures[name] = failure_reason(root, name, state)
                logger.error("%s: %s", name, failures[name].splitlines()[-1])
    return failures


@task(name="run-missing-on-pool", cache_policy=NO_CACHE)
def run_missing_on_pool(
    workspace: str,
    study: str,
    runs: list[PlannedRun],
    commit: str,
    deployment: str,
    git_remote: str,
    jobs: int,
    attempts: int,
    timeout_s: float,
) -> dict[str, str]:
    """Each valid run as a flow run of ``deployment``; then ``dvc exp pull`` of those
    that succeeded. Experiment name -> why it failed, for those that did not."""
    logger = get_run_logger()
    root = Path(workspace)
    valid, failures = refuse_invalid(root, runs, logger)
    outcome = run_on_pool(
        valid, commit=commit, git_remote=git_remote, deployment=deployment, jobs=jobs,
        attempts=attempts, timeout_s=timeout_s, log=logger.info,
        tags=["agegap-study", f"study:{study}"],
    )
    failures.update(outcome.failures)
    pull_experiments(root, git_remote, [run.name for run in valid if run.name not in failures])
    return failures


@task(name="write-study-report", cache_policy=NO_CACHE)
def write_report(
    workspace: str, chosen: Study, runs: list[PlannedRun], failures: Mapping[str, str],
    report_dir: str,
) -> tuple[Path, list[dict[str, Any]]]:
    """``<report_dir>/<study>.md`` and ``.png`` from ``dvc exp show``, and Prefect artifacts."""
    root = Path(workspace)
    shown = exp_show(root)
    missing = [run.name for run in runs_to_make(runs, finished_runs(shown, runs))
               if run.name not in failures]
    revs = [rev["rev"] for rev in experiments_of(shown)]
    records = study_records(runs, shown, run_info(root, revs))
    summary = summarise(records, chosen.baseline)
    folder = root / report_dir
    chart = write_chart(chosen, summary, folder / f"{chosen.name}.png") if summary else None
    rows = list(dict.fromkeys(run.row for run in runs))
    report = folder / f"{chosen.name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(chosen, summary, rows=rows, commit=head_commit(root), failures=failures,
                    missing=missing, chart=chart.name if chart else None, records=records)
    report.write_text(text, encoding="utf-8")
    table = [{k: v for k, v in line.items() if not isinstance(v, list)} for line in summary]
    create_table_artifact(table=table, key=TABLE_KEY, description=f"study {chosen.name}")
    create_markdown_artifact(markdown=text, key=REPORT_KEY, description=str(report))
    return report, summary


@flow(name="agegap-study", description="A study's runs as DVC experiments, and its report.")
def run_study(
    workspace: str = ".",
    study: str = "blog",
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    strategies: list[str] | None = None,
    folds: int | None = None,
    epochs: int | None = None,
    jobs: int | None = None,
    report_dir: str = REPORT_DIR,
    timeout_s: float = 48 * 3600.0,
    deployment: str | None = None,
    git_remote: str = "origin",
    attempts: int = 3,
    bundle: str | None = None,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run what the study lacks on this commit, then report every run it has
    (``report_only``: run nothing, report what there is).

    Locally (no ``deployment``) the missing runs go to DVC's queue. With a deployment
    (``agegap-experiment/study``) they go to its work pool, one flow run each, at most
    ``jobs`` at a time and ``attempts`` flow runs per experiment, and come back through
    ``git_remote`` and the DVC remote. With a ``bundle`` file, its experiments count as
    done, and the study's finished ones are written back to it. Returns the report's
    path, its summary lines and the failed runs with their reasons.
    """
    logger = get_run_logger()
    root = workspace_root(workspace)
    chosen = load_study(study_path(root, study))
    runs = plan(chosen, rows=rows, seeds=seeds, strategies=strategies, folds=folds,
                epochs=epochs)
    # A report only reads: it must not wait hours for a study running here.
    lock = nullcontext() if report_only else workspace_lock(root, on_wait=logger.info)
    with lock:
        if bundle and (restored := exp_bundle.restore(root, root / bundle)):
            logger.info("%s: %d experiments fetched", bundle, restored)
        if deployment:
            commit = check_commit_is_shared(root, git_remote)
            pull_experiments(root, git_remote)  # what other machines ran already
        done = finished_runs(exp_show(root), runs)
        missing = runs_to_make(runs, done)
        if bundle and done and not report_only:  # runs shared with other studies too
            exp_bundle.save(root, root / bundle, head_commit(root), set(done.values()))
        workers = jobs or (len(missing) if deployment else default_jobs(len(missing)))
        distinct = len({run.identity for run in runs})
        logger.info("study %s: %d runs (%d distinct), %d already done, %d %s", chosen.name,
                    len(runs), distinct, len(done), len(missing),
                    "missing, not run: report only" if report_only else
                    f"to run, {workers} at a time on {deployment or 'DVC queue'}")
        if not missing or report_only:
            failures: dict[str, str] = {}
        elif deployment:
            failures = run_missing_on_pool(
                str(root), chosen.name, missing, commit, deployment, git_remote, workers,
                attempts, timeout_s,
            )
        else:
            failures = run_missing(str(root), missing, workers, timeout_s, bundle)
        report, summary = write_report(str(root), chosen, runs, failures, report_dir)
        if bundle and not report_only:
            logger.info("%s: %d experiments kept", bundle, keep_in_bundle(root, bundle, runs))
    logger.info("report: %s", report)
    return {"report": str(report), "summary": summary, "failures": failures}


def plan(
    chosen: Study,
    *,
    rows: list[str] | None,
    seeds: list[int] | None,
    strategies: list[str] | None,
    folds: int | None,
    epochs: int | None,
) -> list[PlannedRun]:
    """The study's runs, narrowed or changed by the command line; bad options are refused."""
    if seeds is not None and not seeds:
        raise AgegapError("--seeds: expected at least one seed")
    if strategies and (bad := [s for s in strategies if s not in STRATEGIES]):
        raise AgegapError(f"--strategies {' '.join(bad)}: expected {' or '.join(STRATEGIES)}")
    if folds is not None:
        check_folds(folds, "--folds")
    if epochs is not None and epochs < 1:
        raise AgegapError(f"--epochs {epochs}: expected at least 1")
    return plan_runs(
        chosen, select_rows(chosen, rows), seeds=seeds, strategies=strategies, folds=folds,
        extra={"epochs": epochs} if epochs is not None else None,
    )


def require_shared_server() -> None:
    """Workers on other machines only see a server they share with this command: a
    temporary one, started here, would wait for ever."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise AgegapError(
            "--pool needs the Prefect server the workers use: set PREFECT_API_URL "
            "(prefect config set PREFECT_API_URL=http://HOST:4200/api)"
        )


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flows.experiments``; bad input is one line and exit 1."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.experiments", description=__doc__.splitlines()[0]
    )
    parser.add_argument("study", help="a study of studies/ (blog, accuracy) or a YAML file")
    parser.add_argument("--workspace", default=".", help="the DVC repository (default: .)")
    parser.add_argument("--rows", help="comma-separated row names (default: the study's "
                        "default_rows, else every row)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the study's)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES,
                        help="split strategies (default: the study's)")
    parser.add_argument("--folds", type=int,
                        help="k-fold cross-validation, k runs per seed (default: the study's)")
    parser.add_argument("--epochs", type=int, help="epochs of every run (default: the study's)")
    parser.add_argument("--jobs", type=int,
                        help="DVC queue workers (default: cores / 2); with --pool, flow runs "
                        "in flight (default: every missing run)")
    parser.add_argument("--pool", action="store_true",
                        help=f"run on the Prefect work pool of the {DEPLOYMENT} deployment "
                        "instead of DVC's local queue")
    parser.add_argument("--deployment", default=DEPLOYMENT,
                        help=f"with --pool: the deployment (default {DEPLOYMENT})")
    parser.add_argument("--git-remote", default="origin",
                        help="with --pool: the git remote the workers share (default origin)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="with --pool: flow runs per experiment at most (default 3)")
    parser.add_argument("--bundle", metavar="FILE",
                        help="a git bundle of the study's experiments: fetched before (its "
                        "runs count as done), each run written to it as it succeeds; commit "
                        "it to keep them")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the report of the runs there are (a study "
                        "under way, here or elsewhere, or one stopped part way)")
    parser.add_argument("--report-dir", default=REPORT_DIR,
                        help=f"folder of STUDY.md and STUDY.png (default {REPORT_DIR}, not in "
                        "git; name reports to replace the committed report)")
    options = parser.parse_args(argv)
    root = workspace_root(options.workspace)
    wanted = [n.strip() for n in options.rows.split(",") if n.strip()] if options.rows else None
    settings = {"rows": wanted, "seeds": options.seeds, "strategies": options.strategies,
                "folds": options.folds, "epochs": options.epochs}
    plan(load_study(study_path(root, options.study)), **settings)  # refuse bad input first
    if options.attempts < 1:
        raise AgegapError(f"--attempts {options.attempts}: expected at least 1")
    if options.jobs is not None and options.jobs < 1:
        raise AgegapError(f"--jobs {options.jobs}: expected at least 1")
    if options.pool and not options.report_only:
        require_shared_server()
    quiet_ephemeral_server()
    state = run_study(workspace=str(root), study=options.study, jobs=options.jobs,
                      report_dir=options.report_dir, return_state=True,
                      deployment=options.deployment if options.pool else None,
                      git_remote=options.git_remote, attempts=options.attempts,
                      bundle=options.bundle, report_only=options.report_only, **settings)
    if not state.is_completed():
        raise AgegapError(f"study failed: {state.message}")
    result = state.result()
    print(f"report: {result['report']}")
    if result["failures"]:
        for name, why in result["failures"].items():
            print(f"failed: {name}: {why.splitlines()[-1]}", file=sys.stderr)
        raise AgegapError(f"{len(result['failures'])} run(s) failed; the report lists them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
