"""A study's report, made from its DVC experiments alone.

The input is what ``dvc exp show --json`` prints (params and metrics of every
experiment) and each experiment's ``train_run.json`` (speed, device, machine: a file
DVC tracks for the run, not a metric). Nothing is kept beside DVC: delete an
experiment and it leaves the report. Pure functions, so a fixed ``exp show`` output
gives a fixed report; the chart is the only file written here.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agegap.layout import METRICS, TRAIN_METRICS
from flows.study_plan import PlannedRun, Row, Study, identity_of

PARAMS_FILE = "params.yaml"
_GROUP = ("row", "strategy", "epochs", "device", "folds")
BLACK_AND_WHITE = "grayscale"
"""The probe with a goal of its own (within 2 points of clean, not 3): reported first."""


def experiments_of(exp_show: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every finished experiment in ``exp show`` output: the revs that have metrics.

    Queued, running and failed experiments carry an executor state other than
    success, or no metrics yet; they are left out.
    """
    found = []
    for baseline in exp_show:
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            if executor and executor.get("state") not in (None, "success"):
                continue
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                if rev.get("name") and _file_data(data, "metrics", str(METRICS)):
                    found.append(rev)
    return found


def _file_data(data: Mapping[str, Any], kind: str, path: str) -> dict[str, Any]:
    return ((data.get(kind) or {}).get(path) or {}).get("data") or {}


def study_records(
    runs: list[PlannedRun],
    exp_show: list[Mapping[str, Any]],
    run_info: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One record per planned run that has a finished experiment, found by identity.

    The row comes from the plan, so a renamed row keeps its runs, and rows that set the
    same params share their experiments; the split, seed and epochs come from the
    experiment's own params. Where an identity appears twice (the same run made again),
    the newer experiment counts.
    """
    rows_of: dict[str, list[str]] = {}
    for run in runs:
        if run.row not in rows_of.setdefault(run.identity, []):
            rows_of[run.identity].append(run.row)
    newest: dict[str, Mapping[str, Any]] = {}
    for rev in experiments_of(exp_show):
        identity = identity_of(rev["name"])
        if identity in rows_of:
            kept = newest.get(identity)
            if kept is None or (rev["data"].get("timestamp") or "") > (
                kept["data"].get("timestamp") or ""
            ):
                newest[identity] = rev
    records = []
    for identity, rev in newest.items():
        data = rev["data"]
        params = _file_data(data, "params", PARAMS_FILE)
        test = _file_data(data, "metrics", str(METRICS))
        trained = _file_data(data, "metrics", str(TRAIN_METRICS))
        info = (run_info or {}).get(rev["rev"], {})
        folds = params.get("cv_folds") or None
        record = {
            "experiment": rev["name"],
            "rev": rev["rev"],
            "strategy": params.get("split_strategy"),
            "seed": params.get("split_seed"),
            "folds": folds,
            "fold": params.get("cv_fold") if folds else None,
            "epochs": params.get("epochs"),
            "test_accuracy": test.get("accuracy"),
            "test_loss": test.get("loss"),
            "n_test": test.get("n_test"),
            "probes": test.get("probes") or {},
            "worst_probe": (test.get("robustness") or {}).get("worst_probe"),
            "gap": (test.get("robustness") or {}).get("gap"),
            "best_val_accuracy": trained.get("best_val_accuracy"),
            "best_epoch": trained.get("best_epoch"),
            "seconds_per_epoch": info.get("seconds_per_epoch"),
            "device": info.get("device", "unknown"),
            "precision": info.get("precision"),
            "machine": ", ".join(str(info[k]) for k in ("cpu", "accelerator", "precision")
                                 if k in info),
        }
        records += [{"row": row, **record} for row in rows_of[identity]]
    order = {(run.row, run.identity): index for index, run in enumerate(runs)}
    return sorted(records, key=lambda r: order[(r["row"], identity_of(r["experiment"]))])


def at_chance(record: Mapping[str, Any]) -> bool:
    """A run whose model never beat a coin on validation: training broke, not a recipe's
    honest score. Counted apart so a reader sees it, and still in the mean."""
    return (record.get("best_val_accuracy") or 0.0) <= 0.5


def _split_key(record: Mapping[str, Any]) -> tuple[Any, Any]:
    """Which test images a run scored: its seed, and its fold under cross-validation."""
    return record["seed"], record["fold"]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarise(records: list[dict[str, Any]], baseline: str | None) -> list[dict[str, Any]]:
    """Per row, split strategy, epochs, device and folds: mean, spread, standard error,
    probes, and the paired difference from ``baseline`` run on the same splits."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in _GROUP), []).append(record)
    summary = []
    for key, members in groups.items():
        line = dict(zip(_GROUP, key, strict=True))
        accuracies = [m["test_accuracy"] for m in members]
        anchor = {_split_key(m): m for m in groups.get((baseline, *key[1:]), [])}
        # Split by split: the same test images, so the split-to-split spread cancels out;
        # a run at chance is broken training and says nothing of a recipe.
        paired = [
            m["test_accuracy"] - anchor[_split_key(m)]["test_accuracy"]
            for m in members
            if _split_key(m) in anchor and not at_chance(m) and not at_chance(anchor[_split_key(m)])
        ] if line["row"] != baseline else []
        # One run has no spread to show: a blank, not a zero that reads as a measurement.
        std = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        probed = [m for m in members if m["probes"]]
        gray = [m["probes"][BLACK_AND_WHITE] for m in probed if BLACK_AND_WHITE in m["probes"]]
        speeds = [m["seconds_per_epoch"] for m in members if m["seconds_per_epoch"] is not None]
        line.update(
            runs=len(members),
            seeds=sorted({m["seed"] for m in members}),
            machines=sorted({m["machine"] for m in members if m["machine"]}),
            at_chance=sum(at_chance(m) for m in members),
            # Under cross-validation each image is tested once: the accuracy over all of them.
            mean=_pooled(members) if line["folds"] else statistics.fmean(accuracies),
            std=std,
            # Of the mean: seed-to-seed (or fold-to-fold) spread and test-set noise together.
            se=None if std is None else std / len(accuracies) ** 0.5,
            paired_runs=len(paired),
            paired_gain=_mean(paired),
            grayscale=_mean(gray),
            worst_probe=_mean([min(m["probes"].values()) for m in probed]),
            worst_probes=sorted({m["worst_probe"] for m in probed if m["worst_probe"]}),
            largest_gap=_largest_gap(probed, pooled=bool(line["folds"])),
            test_loss=_mean_of(members, "test_loss"),
            val=_mean_of(members, "best_val_accuracy"),
            best_epoch=_mean_of(members, "best_epoch"),
            seconds_per_epoch=_mean(speeds),
        )
        summary.append(line)
    rows = list(dict.fromkeys(record["row"] for record in records))
    return sorted(summary, key=lambda s: (
        str(s["device"]), str(s["strategy"]), rows.index(s["row"]), s["epochs"] or 0,
        s["folds"] or 0,
    ))


def _mean_of(records: list[dict[str, Any]], key: str) -> float | None:
    return _mean([r[key] for r in records if r[key] is not None])


def _pooled(records: list[dict[str, Any]], accuracy=lambda r: r["test_accuracy"]) -> float:
    """Correct answers over all test images of the runs, each run weighted by its size."""
    correct = sum(accuracy(r) * r["n_test"] for r in records)
    return correct / sum(r["n_test"] for r in records)


def _largest_gap(records: list[dict[str, Any]], *, pooled: bool) -> tuple[float, str] | None:
    """The probe furthest below clean accuracy on average over the runs (over all images
    under cross-validation), and by how much: what the robustness goals bound, which the
    mean of each run's worst probe overstates when runs differ in their worst."""
    names = set.intersection(*(set(r["probes"]) for r in records)) if records else set()
    if not names:
        return None

    def average(accuracy) -> float:
        return _pooled(records, accuracy) if pooled else statistics.fmean(map(accuracy, records))

    clean = average(lambda r: r["test_accuracy"])
    gaps = {name: clean - average(lambda r, name=name: r["probes"][name])
            for name in sorted(names)}
    name = max(gaps, key=gaps.get)
    return gaps[name], name


def markdown(
    study: Study,
    summary: list[dict[str, Any]],
    *,
    commit: str,
    rows: list[str] | None = None,
    failures: Mapping[str, str] | None = None,
    missing: list[str] | None = None,
    chart: str | None = None,
    records: list[dict[str, Any]] | None = None,
) -> str:
    """The report: one table line per summary line, the overrides of ``rows`` (those in
    the summary when None), every run of ``records`` with its probes, the failed runs
    with their reasons, and the runs not made yet (a report of a study under way)."""
    machines = sorted({m for s in summary for m in s["machines"]}) or ["not recorded"]
    references = {row.name: row.reference for row in study.rows if row.reference}
    lines = [
        f"# Study `{study.name}`",
        "",
        *([study.description.strip(), ""] if study.description.strip() else []),
        f"Made by `python -m flows.experiments {study.name}` from the DVC experiments of "
        f"commit `{commit[:12]}` (`dvc exp show`). Machines: {'; '.join(machines)}.",
        "",
        "Test accuracy in %: mean ± standard deviation over the runs (each seed is its own "
        "split and training seed), the standard error of the mean, and the mean paired "
        f"difference from the `{study.baseline}` row on the same splits."
        if study.baseline else
        "Test accuracy in %: mean ± standard deviation over the runs (each seed is its own "
        "split and training seed) and the standard error of the mean.",
        "",
    ]
    head = ["device", "split", "row", "epochs", "runs (seeds)", "test accuracy", "standard error"]
    if study.baseline:
        head.append(f"vs `{study.baseline}`, paired (runs)")
    head += ["test loss", "best val acc", "best epoch", "s/epoch", "runs at chance",
             "black and white", "worst probe (which)", "largest mean gap to clean (probe)"]
    if references:
        head += ["reference val acc", "reference test acc"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [
            str(s["device"]), _split_label(s), s["row"], str(s["epochs"]),
            f"{s['runs']} ({', '.join(map(str, s['seeds']))}"
            + (f"; {s['folds']}-fold, pooled)" if s["folds"] else ")"),
            f"{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f}" if s["std"] is not None else ""),
            _number(s["se"], 100, 2),
        ]
        if study.baseline:
            cells.append(_gain(s["paired_gain"], s["paired_runs"]))
        cells += [
            _number(s["test_loss"], 1, 3), _number(s["val"], 100, 2),
            _number(s["best_epoch"], 1, 0),
            _number(s["seconds_per_epoch"], 1, 2), str(s["at_chance"]),
            _number(s["grayscale"], 100, 2),
            _number(s["worst_probe"], 100, 2)
            + (f" ({', '.join(s['worst_probes'])})" if s["worst_probes"] else ""),
            f"{100 * s['largest_gap'][0]:.2f} ({s['largest_gap'][1]})" if s["largest_gap"] else "",
        ]
        if references:
            reference = references.get(s["row"]) or {}
            cells += [_number(reference.get("val_accuracy"), 100, 2),
                      _number(reference.get("test_accuracy"), 100, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Rows (the params.yaml keys each run sets; studies/{study.name}.yaml):", ""]
    shown = set(rows) if rows is not None else {s["row"] for s in summary}
    lines += _row_lines(study, [row for row in study.rows if row.name in shown])
    if records:
        lines += ["", "## Every run", "", *run_lines(records)]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{name}`: {why}" for name, why in failures.items()]
    if missing:
        lines += ["", f"## Not done yet ({len(missing)})", ""]
        lines += [f"- `{name}`" for name in missing]
    if chart:
        lines += ["", f"![test accuracy by row]({chart})"]
    return "\n".join(lines) + "\n"


def run_lines(records: list[dict[str, Any]]) -> list[str]:
    """One table line per run, with each probe: a mean can meet a goal that single runs
    miss, and pairing two recipes split by split needs the runs themselves. Black and
    white first, the other probes by name (``exp show`` sorts a metric's keys)."""
    probes = sorted({name for r in records for name in r["probes"]},
                    key=lambda name: (name != BLACK_AND_WHITE, name))
    head = ["row", "split", "seed", "fold", "epochs", "clean", *probes,
            "worst probe", "gap", "test loss", "experiment"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [
            r["row"], _split_label(r), str(r["seed"]),
            "" if r["fold"] is None else str(r["fold"]), str(r["epochs"]),
            _number(r["test_accuracy"], 100, 2),
            *(_number(r["probes"].get(name), 100, 1) for name in probes),
            r["worst_probe"] or "", _number(r["gap"], 100, 1),
            _number(r["test_loss"], 1, 3), f"`{r['rev'][:7]}`",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _split_label(line: Mapping[str, Any]) -> str:
    """A run's split strategy, or where it came from when the row left it to params.yaml."""
    return str(line["strategy"] or PARAMS_FILE)


def _row_lines(study: Study, rows: list[Row]) -> list[str]:
    """Each row's overrides as a difference a reader can see: against the baseline row
    where the study names one, else against the keys every listed row sets alike, written
    once (a study's common ``base`` would otherwise repeat on every line)."""
    lines: list[str] = []
    if study.baseline:
        common = study.row(study.baseline).overrides
    elif len(rows) > 1:
        common = {k: v for k, v in rows[0].overrides.items()
                  if all(k in r.overrides and r.overrides[k] == v for r in rows)}
        lines.append(f"- every row: `{json.dumps(common, sort_keys=True)}`")
    else:
        common = {}
    for row in rows:
        if row.name == study.baseline:
            what = f"`{json.dumps(row.overrides, sort_keys=True)}`"
        else:
            own = {k: v for k, v in row.overrides.items() if k not in common or common[k] != v}
            what = f"`{json.dumps(own, sort_keys=True)}`" if own else "nothing more"
            if study.baseline:
                what = f"`{study.baseline}` with {what}"
        lines.append(f"- `{row.name}`: {row.description + '; ' if row.description else ''}{what}")
    return lines


def _number(value: float | None, scale: float, digits: int) -> str:
    return "" if value is None else f"{value * scale:.{digits}f}"


def _gain(gain: float | None, runs: int) -> str:
    """A mean gain in points with its number of runs. One that rounds to nothing is
    written ``0.00``: a sign there (``-0.00`` from float noise) would claim a direction
    that is not measured."""
    if gain is None:
        return ""
    points = round(100 * gain, 2)
    return f"{points:+.2f} ({runs})" if points else f"0.00 ({runs})"


def write_chart(study: Study, summary: list[dict[str, Any]], path: Path) -> Path:
    """A horizontal bar per summary line (mean ± sd), with the rows' reference figures as
    diamonds: horizontal, so that long row names stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    references = {row.name: (row.reference or {}).get("test_accuracy") for row in study.rows}
    labels = [f"{s['row']} ({s['strategy'] or 'params'})" for s in summary]
    positions = list(range(len(summary)))
    means = [100 * s["mean"] for s in summary]
    spreads = [100 * (s["std"] or 0.0) for s in summary]
    figure, axes = plt.subplots(figsize=(10, 1.5 + 0.4 * len(summary)))
    axes.barh(positions, means, xerr=spreads, capsize=4, color="#4c72b0",
              label="this study (mean ± sd)")
    marked = [(i, references[s["row"]]) for i, s in zip(positions, summary, strict=True)
              if references.get(s["row"]) is not None]
    if marked:
        axes.scatter([100 * v for _, v in marked], [i for i, _ in marked], color="#dd8452",
                     marker="D", zorder=3, label="reference (one run)")
    # Differences of a few points are what a study shows: start the axis near the lowest bar.
    lowest = min([m - e for m, e in zip(means, spreads, strict=True)]
                 + [100 * v for _, v in marked])
    axes.set_xlim(max(0, 10 * (int(lowest) // 10) - 10), 100)
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()
    axes.set_xlabel("test accuracy (%)")
    axes.set_title(f"Study {study.name}: test accuracy by row")
    axes.legend(loc="best")  # where it covers the fewest bars
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
