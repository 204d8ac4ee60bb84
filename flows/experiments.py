"""The blog's hyperparameter study as one command: DVC experiments, repeats, a report.

Usage: ``python -m flows.experiments [--rows baseline,adam] [--repeats K] [--epochs E] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from agegap.errors import AgegapError, exits_cleanly
from agegap.layout import METRICS, TRAIN_METRICS, TRAIN_RUN
from flows.dvc_commands import (
    dvc_environment,
    experiment_args,
    experiment_name,
    run_dvc,
    validate_overrides,
    workspace_lock,
    workspace_root,
)
from flows.ephemeral import quiet_ephemeral_server

STUDY_FILE = "experiments.yaml"
# Not in git: a trial study never overwrites the committed reports/experiments.md.
REPORT_DIR = ".experiments"
TABLE_KEY = "agegap-experiments"
REPORT_KEY = "agegap-experiments-report"
DONE_STATES = frozenset({"Success", "Failed"})


@dataclass(frozen=True)
class Row:
    """One row of the study: a name, its overrides and the blog's numbers (if any)."""

    name: str
    overrides: dict[str, Any]
    description: str = ""
    blog: dict[str, float] | None = None


@dataclass
class Run:
    """One experiment of the study: a row with one seed, and what became of it."""

    row: str
    seed: int
    name: str
    overrides: dict[str, Any]
    status: str = "queued"
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def load_study(path: Path) -> list[Row]:
    """The rows of ``experiments.yaml``; a one-line error names what is wrong."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgegapError(f"{path}: no such study file") from None
    except yaml.YAMLError as error:
        raise AgegapError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    entries = spec.get("rows") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise AgegapError(f"{path}: expected a non-empty list under 'rows:'")
    rows: list[Row] = []
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise AgegapError(f"{path}: row {index} needs a 'name'")
        overrides = entry.get("set") or {}
        if not isinstance(overrides, dict):
            raise AgegapError(f"{path}: row {entry['name']!r}: 'set' must be a mapping of params")
        blog = entry.get("blog")
        if blog is not None and not isinstance(blog, dict):
            raise AgegapError(f"{path}: row {entry['name']!r}: 'blog' must be a mapping or null")
        rows.append(Row(entry["name"], dict(overrides), str(entry.get("description") or ""), blog))
    names = [row.name for row in rows]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise AgegapError(f"{path}: duplicate row names: {', '.join(duplicates)}")
    return rows


def select_rows(rows: list[Row], wanted: list[str] | None) -> list[Row]:
    """The rows named in ``wanted`` (all when None), in the study file's order."""
    if not wanted:
        return rows
    known = [row.name for row in rows]
    if unknown := [name for name in wanted if name not in known]:
        raise AgegapError(
            f"--rows: unknown row(s) {', '.join(unknown)}: expected some of {', '.join(known)}"
        )
    return [row for row in rows if row.name in wanted]


def default_jobs(experiments: int) -> int:
    """Parallel DVC workers: one per two cores (training itself uses several threads)."""
    return max(1, min(experiments, (os.cpu_count() or 2) // 2))


def plan_runs(rows: list[Row], repeats: int, epochs: int | None, study: str) -> list[Run]:
    """Every (row, seed) experiment, named ``<study>-<row>-s<seed>``."""
    runs: list[Run] = []
    for row in rows:
        for seed in range(repeats):
            overrides = {**row.overrides, "seed": seed, "split_seed": seed}
            if epochs is not None:
                overrides["epochs"] = epochs
            name = experiment_name(f"{study}-{row.name}-s{seed}")
            runs.append(Run(row.name, seed, name, overrides))
    return runs


@task(name="queue-experiments", cache_policy=NO_CACHE)
def queue_runs(workspace: str, runs: list[Run]) -> list[Run]:
    """Validate each run's overrides and queue the valid ones; an invalid one fails alone."""
    logger = get_run_logger()
    root = Path(workspace)
    for run in runs:
        try:
            validate_overrides(root, run.overrides)
        except AgegapError as error:
            run.status, run.error = "Failed", str(error)
            logger.error("%s: not queued: %s", run.name, error)
            continue
        args = experiment_args(run.name, run.overrides)
        args.insert(2, "--queue")
        result = run_dvc(args, root, check=False)
        if result.returncode != 0:
            run.status, run.error = "Failed", result.error_summary()
            logger.error("%s: could not be queued: %s", run.name, run.error)
        else:
            logger.info("queued %s", run.name)
    return runs


@task(name="run-queue", cache_policy=NO_CACHE)
def run_queue(workspace: str, names: list[str], jobs: int, timeout_s: float) -> dict[str, str]:
    """``dvc queue start -j N``, then wait until every named experiment succeeded or failed."""
    logger = get_run_logger()
    root = Path(workspace)
    for line in start_queue(root, jobs):
        logger.info(line)
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    mine = dict.fromkeys(names, "Queued")
    try:
        while True:
            states = queue_states(root)
            mine = {name: states.get(name, "Unknown") for name in names}
            if mine != last:
                counts = {s: list(mine.values()).count(s) for s in sorted(set(mine.values()))}
                logger.info("queue: %s", ", ".join(f"{n} {s}" for s, n in counts.items()))
                last = mine
            if all(state in DONE_STATES for state in mine.values()):
                return mine
            if time.monotonic() > deadline:
                logger.error("the study ran past %.0f s: stopping its experiments", timeout_s)
                _stop_queue(root, mine)
                return {n: (s if s in DONE_STATES else "Timed out") for n, s in mine.items()}
            time.sleep(5)
    except BaseException:
        # Cancelled or interrupted: DVC's queue workers would otherwise run on alone.
        _stop_queue(root, mine)
        raise
    finally:
        # Idle workers can linger after the queue is empty; let them go.
        run_dvc(["queue", "stop"], root, check=False, timeout=120)


def start_queue(root: Path, jobs: int) -> list[str]:
    """``dvc queue start -j N``; its output lines.

    Not through :func:`run_dvc`: the workers DVC starts inherit the command's stdout,
    so a pipe would stay open, and the call blocked, until the last worker exits.
    Its output goes to a file instead.
    """
    log = root / ".dvc" / "tmp" / "agegap-queue-start.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "start", "--jobs", str(jobs)],
            cwd=root,
            env=dvc_environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=300,
        )
    return [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def _stop_queue(root: Path, states: Mapping[str, str]) -> None:
    """Kill this study's running experiments and drop its queued ones."""
    running = [name for name, state in states.items() if state == "Running"]
    queued = [name for name, state in states.items() if state == "Queued"]
    if running:
        run_dvc(["queue", "kill", *running], root, check=False)
    if queued:
        run_dvc(["queue", "remove", *queued], root, check=False)


def queue_states(root: Path) -> dict[str, str]:
    """Experiment name -> Queued / Running / Success / Failed, from ``dvc queue status``.

    Read through the CLI, not ``Repo.experiments.celery_queue`` in this process: the
    in-process call was seen to block until the whole queue had finished.
    """
    result = run_dvc(["queue", "status"], root, check=False)
    states: dict[str, str] = {}
    for line in result.lines:
        fields = line.split()
        # Task  Name  Created  Status: a short hash, the name, a date, the status last.
        if len(fields) >= 4 and _is_hex(fields[0]) and fields[-1] in _QUEUE_STATES:
            states[fields[1]] = fields[-1]
    return states


_QUEUE_STATES = frozenset({"Queued", "Running", "Success", "Failed", "Unknown"})


def _is_hex(text: str) -> bool:
    return len(text) >= 7 and all(c in "0123456789abcdef" for c in text)


@task(name="collect-results", cache_policy=NO_CACHE)
def collect(workspace: str, runs: list[Run], states: Mapping[str, str]) -> list[Run]:
    """Each run's metrics from ``dvc.api.exp_show``; a failed run's error from its queue log."""
    import dvc.api

    root = Path(workspace)
    shown = {row.get("Experiment"): row for row in dvc.api.exp_show(repo=str(root))}
    for run in runs:
        if run.status == "Failed":  # refused before queueing
            continue
        run.status = states.get(run.name, "Unknown")
        if run.status == "Success" and run.name in shown:
            run.metrics = _metrics(shown[run.name])
            run.metrics["seconds_per_epoch"] = _seconds_per_epoch(root, shown[run.name])
        elif run.status != "Success":
            log = run_dvc(["queue", "logs", run.name], root, check=False)
            run.error = log.error_summary(limit=3) or f"experiment ended as {run.status}"
            run.status = "Failed"
    return runs


def _metrics(shown: Mapping[str, Any]) -> dict[str, Any]:
    """The study's numbers from one ``exp_show`` row (columns are prefixed only when ambiguous)."""

    def pick(path: str, key: str) -> Any:
        value = shown.get(f"{path}:{key}", shown.get(key))
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return {
        "test_accuracy": pick(str(METRICS), "accuracy"),
        "test_loss": pick(str(METRICS), "loss"),
        "val_accuracy": pick(str(TRAIN_METRICS), "best_val_accuracy"),
        "train_accuracy": pick(str(TRAIN_METRICS), "train_accuracy_at_best"),
    }


def _seconds_per_epoch(root: Path, shown: Mapping[str, Any]) -> float | None:
    """The run's speed, from the ``train_run.json`` its experiment commit holds: timings
    are not DVC metrics, so ``exp_show`` does not list them. None where it cannot be read."""
    import dvc.api

    try:
        run = json.loads(dvc.api.read(str(TRAIN_RUN), repo=str(root), rev=shown.get("rev")))
        value = run["seconds_per_epoch"]
    except Exception:  # a missing speed leaves a blank cell, never a failed study
        return None
    return float(value) if isinstance(value, int | float) else None


def summarise(rows: list[Row], runs: list[Run]) -> list[dict[str, Any]]:
    """One line per row: mean and standard deviation over its successful repeats."""

    def spread(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    table: list[dict[str, Any]] = []
    for row in rows:
        mine = [run for run in runs if run.row == row.name]
        ok = [run for run in mine if run.status == "Success"]
        line: dict[str, Any] = {
            "row": row.name,
            # Rows spell out their whole recipe, so the description is the readable part.
            "what": row.description or _short(row.overrides),
            "runs": f"{len(ok)}/{len(mine)}",
        }
        for key in ("test_accuracy", "test_loss", "val_accuracy", "seconds_per_epoch"):
            values = [run.metrics[key] for run in ok if run.metrics.get(key) is not None]
            line[f"{key}_mean"], line[f"{key}_std"] = spread(values)
        for key in ("val_accuracy", "test_accuracy", "test_loss"):
            line[f"blog_{key}"] = (row.blog or {}).get(key)
        line["errors"] = "; ".join(
            sorted({run.error.splitlines()[-1] for run in mine if run.error})
        )
        table.append(line)
    return table


def _short(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in overrides.items())


def _pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None:
        return "failed"
    return f"{mean * scale:.{digits}f} ± {(std or 0.0) * scale:.{digits}f}"


def _blog(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def write_report(
    folder: Path, table: list[dict[str, Any]], runs: list[Run], header: Mapping[str, Any]
) -> tuple[Path, Path]:
    """``experiments.md`` (the table beside the blog's) and its bar chart PNG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    chart = folder / "experiments.png"
    _chart(table, chart, header)
    lines = [
        "# The blog's study, reproduced as DVC experiments",
        "",
        ", ".join(f"{key}: **{value}**" for key, value in header.items()),
        "",
        "Accuracies in %, mean ± standard deviation over the repeats (each repeat changes the",
        "split and training seeds). Blog: its single run per row. Validation accuracy is the",
        "best epoch's; test figures are that epoch's model on the test split.",
        "",
        "| row | runs | test acc | test loss | best val acc | s/epoch "
        "| blog val acc | blog test acc | blog test loss | what (experiments.yaml) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for line in table:
        lines.append(
            f"| {line['row']} | {line['runs']} "
            f"| {_pm(line['test_accuracy_mean'], line['test_accuracy_std'], 100)} "
            f"| {_pm(line['test_loss_mean'], line['test_loss_std'], 1, 3)} "
            f"| {_pm(line['val_accuracy_mean'], line['val_accuracy_std'], 100)} "
            f"| {_pm(line['seconds_per_epoch_mean'], line['seconds_per_epoch_std'], 1, 2)} "
            f"| {_blog(line['blog_val_accuracy'], 100)} | {_blog(line['blog_test_accuracy'], 100)} "
            f"| {_blog(line['blog_test_loss'], 1, 3)} | {line['what']} |"
        )
    failed = [run for run in runs if run.status != "Success"]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- `{run.name}`: {run.error.splitlines()[-1] if run.error else run.status}"
            for run in failed
        ]
    lines += ["", f"![test accuracy by row]({chart.name})", ""]
    report = folder / "experiments.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report, chart


def _chart(table: list[dict[str, Any]], path: Path, header: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [line["row"] for line in table]
    means = [100 * (line["test_accuracy_mean"] or 0.0) for line in table]
    stds = [100 * (line["test_accuracy_std"] or 0.0) for line in table]
    blog = [
        100 * line["blog_test_accuracy"] if line["blog_test_accuracy"] else None for line in table
    ]
    figure, axes = plt.subplots(figsize=(max(6, 0.8 * len(names) + 2), 4.5))
    positions = range(len(names))
    axes.bar(
        positions, means, yerr=stds, capsize=4, color="#4c72b0", label="this study (mean ± sd)"
    )
    axes.scatter(
        [i for i, b in zip(positions, blog, strict=True) if b is not None],
        [b for b in blog if b is not None],
        color="#dd8452",
        marker="D",
        zorder=3,
        label="blog (one run)",
    )
    for index, line in enumerate(table):
        if line["test_accuracy_mean"] is None:
            axes.text(index, 2, "failed", ha="center", va="bottom", color="#c44e52")
    axes.set_xticks(list(positions), names, rotation=30, ha="right")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(
        f"Test accuracy by row ({header.get('repeats')} repeats, {header.get('epochs')} epochs)"
    )
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@flow(name="agegap-experiments", description="The blog's hyperparameter study as DVC experiments.")
def study(
    workspace: str = ".",
    rows: list[str] | None = None,
    repeats: int = 1,
    epochs: int | None = None,
    jobs: int | None = None,
    study_file: str = STUDY_FILE,
    report_dir: str = REPORT_DIR,
    timeout_s: float = 48 * 3600.0,
) -> list[dict[str, Any]]:
    """Queue every (row, seed) as a DVC experiment, run the queue, report mean ± sd per row.

    A row whose overrides are invalid, or whose experiment fails, is reported as failed
    with its error message; the other rows still run.
    """
    logger = get_run_logger()
    root = workspace_root(workspace)
    if repeats < 1:
        raise AgegapError(f"--repeats {repeats}: expected at least 1")
    if epochs is not None and epochs < 1:
        raise AgegapError(f"--epochs {epochs}: expected at least 1")
    chosen = select_rows(load_study(root / study_file), rows)
    label = dt.datetime.now(dt.UTC).strftime("study-%Y%m%d-%H%M%S")
    planned = plan_runs(chosen, repeats, epochs, label)
    workers = jobs or default_jobs(len(planned))
    logger.info(
        "%d experiments (%d rows x %d repeats), %d workers",
        len(planned),
        len(chosen),
        repeats,
        workers,
    )
    with workspace_lock(root, on_wait=logger.info):
        planned = queue_runs(str(root), planned)
        queued = [run.name for run in planned if run.status == "queued"]
        states = run_queue(str(root), queued, workers, timeout_s) if queued else {}
        planned = collect(str(root), planned, states)
    table = summarise(chosen, planned)
    header = {
        "study": label,
        "repeats": repeats,
        "epochs": epochs or "params.yaml",
        "jobs": workers,
    }
    report, chart = write_report(root / report_dir, table, planned, header)
    create_table_artifact(table=table, key=TABLE_KEY, description=f"{label}: mean ± sd per row")
    create_markdown_artifact(
        markdown=report.read_text(encoding="utf-8"), key=REPORT_KEY, description=str(report)
    )
    logger.info("report: %s; chart: %s", report, chart)
    return table


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flows.experiments``; bad input is one line and exit 1."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.experiments", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workspace", default=".", help="the DVC repository (default: .)")
    parser.add_argument("--rows", help="comma-separated row names (default: all rows)")
    parser.add_argument("--repeats", type=int, default=1, help="seeds per row (default 1)")
    parser.add_argument("--epochs", type=int, help="epochs for every row (default: params.yaml)")
    parser.add_argument("--jobs", type=int, help="parallel DVC queue workers (default: cores / 2)")
    parser.add_argument("--study", default=STUDY_FILE, help=f"study file (default {STUDY_FILE})")
    parser.add_argument("--report-dir", default=REPORT_DIR,
                        help=f"folder of experiments.md and .png (default {REPORT_DIR}, not in "
                        "git; name reports to replace the committed report)")
    options = parser.parse_args(argv)
    root = workspace_root(options.workspace)
    wanted = (
        [name.strip() for name in options.rows.split(",") if name.strip()] if options.rows else None
    )
    select_rows(load_study(root / options.study), wanted)  # refuse bad names before starting
    quiet_ephemeral_server()
    state = study(
        workspace=str(root),
        rows=wanted,
        repeats=options.repeats,
        epochs=options.epochs,
        jobs=options.jobs,
        study_file=options.study,
        report_dir=options.report_dir,
        return_state=True,
    )
    if not state.is_completed():
        raise AgegapError(f"study failed: {state.message}")
    print(f"report: {root / options.report_dir / 'experiments.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
