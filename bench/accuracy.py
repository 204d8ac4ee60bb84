"""The fair accuracy protocol: each recipe x split strategy x three split seeds.

Each run is a real ``split`` + ``train`` + ``evaluate``; usage and method: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

from agegap.layout import METRICS, RAW_DIR, RAW_MANIFEST, TRAIN_METRICS, TRAIN_RUN

REPO = Path(__file__).resolve().parents[1]
RECIPES_FILE = Path(__file__).with_name("accuracy_recipes.yaml")
DEFAULT_ARCHIVE = REPO.parent / "shared" / "datasets" / "LAGdataset_100.zip"
# The blog's recipe: every other recipe is summarised against it, seed by seed.
ANCHOR = "blog"
# Under k-fold cross-validation the other folds hold about (k-1)/k of each class, too few
# for the 1,200 + 600 of the usual quotas at k = 5: validation gives way, training keeps
# its 1,200 images per class.
CV_VALIDATION_PER_CLASS = 300


def load_recipes(path: Path) -> dict[str, dict[str, Any]]:
    """Named sets of params overrides (``blog``, ``blog+cutout``, ...)."""
    recipes = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(recipes, dict):
        raise SystemExit(f"error: {path}: expected a mapping of recipe name -> overrides")
    return {name: dict(overrides or {}) for name, overrides in recipes.items()}


def prepare_raw(work: Path, archive: Path) -> Path:
    """Run the download stage once; every run links to this ``data/raw``."""
    raw_home = work / "raw-home"
    if not (raw_home / RAW_MANIFEST).is_file():
        raw_home.mkdir(parents=True, exist_ok=True)
        (raw_home / "params.yaml").write_text(
            yaml.safe_dump({"data_url": str(archive)}), encoding="utf-8"
        )
        _stage("download", raw_home)
    return raw_home / RAW_DIR


def _child_env() -> dict[str, str]:
    """The stages import ``agegap`` from this checkout, and whatever PYTHONPATH adds."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _python(workspace: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``workspace``, with this checkout importable."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=workspace, env=_child_env(),
        capture_output=True, text=True,
    )


def _stage(name: str, workspace: Path, *options: str) -> None:
    result = _python(workspace, f"stages.{name}", *options)
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"stage {name} failed in {workspace}: {' '.join(tail)}")


def flip_scores(workspace: Path) -> dict[str, float]:
    """Test accuracy of the run's model without and with flip TTA.

    TTA only changes how the evaluate stage scores a model, and training is
    deterministic, so flip TTA is measured on every run's own model for free (a
    separate ``blog+tta`` run would retrain the very same weights). Uses ``agegap score``,
    which shares its code with the evaluate stage.
    """
    scores = {}
    # Explicit flags both ways: without one, score follows the workspace's tta_flip.
    flags = (("test_accuracy_plain", ["--no-tta-flip"]), ("test_accuracy_tta", ["--tta-flip"]))
    for key, flag in flags:
        result = _python(workspace, "agegap.cli", "score", "data/split/test", "--json", *flag)
        if result.returncode:
            raise RuntimeError(f"agegap score failed in {workspace}: {result.stderr[-300:]}")
        scores[key] = json.loads(result.stdout)["accuracy"]
    return scores


def code_version() -> str:
    """The commit the runs train with, ``+modified`` if the code differs from it.

    Two versions of the code can be mathematically equal and still train differently
    (another order of floating-point operations grows apart over 100 epochs), so a row
    has to say which code made it: otherwise a stored result cannot be told apart from
    one the current code would no longer reproduce. Only what a run executes counts
    (``agegap/``, ``stages/``), so editing a report does not mark the runs modified.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "agegap", "stages")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}+modified" if changed else commit


def code_of_run(before: str, after: str) -> str:
    """The ``code`` a row records: the code when its stages started, and when they ended
    if that differs.

    Each stage imports the code when its process starts, and a run lasts minutes to
    hours: an edit or a checkout in the meantime means the row was made by a mix of two
    versions, and saying so keeps it from passing for either.
    """
    return before if after == before else f"{before}, then {after} (changed during the run)"


def run_once(
    work: Path, raw: Path, recipe: str, overrides: dict, strategy: str, seed: int, epochs: int,
    *, dvclive: bool = True, folds: int = 0, fold: int | None = None,
) -> dict[str, Any]:
    """One pipeline run; returns its test and validation scores, timing and device.

    With ``folds`` the test split is fold ``fold`` of a k-fold partition (``cv_folds``).
    """
    suffix = f"-fold{fold}of{folds}" if folds else ""
    workspace = work / f"{recipe}-{strategy}-{seed}{suffix}"
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    link = workspace / RAW_DIR
    if not link.exists():
        link.symlink_to(raw, target_is_directory=True)
    params = {
        **overrides,
        "split_strategy": strategy,
        "split_seed": seed,
        "seed": seed,
        "epochs": epochs,
        **({"cv_folds": folds, "cv_fold": fold, "validation_per_class": CV_VALIDATION_PER_CLASS}
           if folds else {}),
    }
    (workspace / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    code_at_start = code_version()
    started = time.perf_counter()
    _stage("split", workspace)
    _stage("train", workspace, *([] if dvclive else ["--no-dvclive"]))
    _stage("evaluate", workspace)
    test = json.loads((workspace / METRICS).read_text(encoding="utf-8"))
    trained = json.loads((workspace / TRAIN_METRICS).read_text(encoding="utf-8"))
    how = json.loads((workspace / TRAIN_RUN).read_text(encoding="utf-8"))
    return {
        "recipe": recipe,
        "strategy": strategy,
        "seed": seed,
        **({"folds": folds, "fold": fold} if folds else {}),
        "epochs": epochs,
        "overrides": overrides,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "probes": test["probes"],
        "worst_probe": test["robustness"]["worst_probe"],
        "by_colour": test["by_colour"],
        "n_test": test["n_test"],
        "best_val_accuracy": trained["best_val_accuracy"],
        "best_epoch": trained["best_epoch"],
        "epochs_run": trained.get("epochs_run", epochs),
        "seconds_per_epoch": how["seconds_per_epoch"],
        "wall_seconds": time.perf_counter() - started,
        "backend": how["backend"],
        "device": how["device"],
        "precision": how["precision"],
        "machine": f"{platform.node() or 'unknown'}, {how['cpu']}, {how['accelerator']}",
        "code": code_of_run(code_at_start, code_version()),
        **flip_scores(workspace),
    }


def at_chance(row: dict[str, Any]) -> bool:
    """A run whose model never beat a coin on validation: training broke, not a recipe's
    honest score. Counted apart so a reader sees it, and still in the mean."""
    return row["best_val_accuracy"] <= 0.5


def run_key(row: dict[str, Any]) -> tuple[int, int | None]:
    """Which split a run tested on: its seed, and its fold under cross-validation."""
    return row["seed"], row.get("fold")


def pooled_accuracy(rows: list[dict[str, Any]]) -> float:
    """Correct answers over all test images of the runs, each run weighted by its size."""
    return sum(r["test_accuracy"] * r["n_test"] for r in rows) / sum(r["n_test"] for r in rows)


def device_of(row: dict[str, Any]) -> str:
    """Where a run trained; rows stored before this was recorded all ran on the CPU."""
    return row.get("device", "cpu")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of test accuracy per recipe, strategy, epochs, device,
    and each recipe's paired difference from ``ANCHOR`` run on the same splits."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["recipe"], row["strategy"], row["epochs"], device_of(row), row.get("folds"))
        groups.setdefault(key, []).append(row)
    summary = []
    for (recipe, strategy, epochs, device, folds), members in groups.items():
        accuracies = [m["test_accuracy"] for m in members]
        flipped = [m for m in members if "test_accuracy_tta" in m]
        anchor = groups.get((ANCHOR, strategy, epochs, device, folds), [])
        anchored = {run_key(m): m for m in anchor}
        paired = [  # a run at chance is broken training: it says nothing of a recipe
            m["test_accuracy"] - anchored[run_key(m)]["test_accuracy"]
            for m in members
            if run_key(m) in anchored and not at_chance(m)
            and not at_chance(anchored[run_key(m)])
        ] if recipe != ANCHOR else []
        std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        summary.append({
            "recipe": recipe,
            "strategy": strategy,
            "epochs": epochs,
            "device": device,
            "machines": sorted({m["machine"] for m in members if "machine" in m}),
            "runs": len(members),
            "folds": folds,
            "at_chance": sum(at_chance(m) for m in members),
            "seeds": sorted({m["seed"] for m in members}),
            # Under cross-validation each image is tested once: the accuracy over all of them.
            "mean": pooled_accuracy(members) if folds else statistics.fmean(accuracies),
            "std": std,
            # Of the mean: seed-to-seed (or fold-to-fold) spread and test-set noise together.
            "se": std / len(accuracies) ** 0.5,
            # Seed by seed against the anchor: the same split and test images, so the
            # split-to-split spread cancels out of the difference.
            "paired_runs": len(paired),
            "paired_gain": statistics.fmean(paired) if paired else None,
            # Robustness probes (rows made before the probes existed have none).
            "probe_runs": len(probed := [m for m in members if "probes" in m]),
            "grayscale_mean": statistics.fmean(m["probes"]["grayscale"] for m in probed)
            if probed else None,
            "worst_probe_mean": statistics.fmean(min(m["probes"].values()) for m in probed)
            if probed else None,
            "worst_probes": sorted({m["worst_probe"] for m in probed}),
            "val_mean": statistics.fmean(m["best_val_accuracy"] for m in members),
            "best_epoch_mean": statistics.fmean(m["best_epoch"] for m in members),
            "seconds_per_epoch": statistics.fmean(m["seconds_per_epoch"] for m in members),
            # Paired: the same models scored without and with flip TTA.
            "tta_runs": len(flipped),
            "tta_gain": statistics.fmean(
                m["test_accuracy_tta"] - m["test_accuracy_plain"] for m in flipped
            ) if flipped else None,
        })
    return sorted(
        summary,
        key=lambda s: (s["device"], s["strategy"], s["recipe"], s["epochs"], s["folds"] or 0),
    )


def markdown(summary: list[dict[str, Any]], recipes: dict[str, dict]) -> str:
    machines = sorted({m for s in summary for m in s["machines"]}) or ["not recorded"]
    lines = [
        "Measured by `python bench/accuracy.py`; one training seed per split seed. "
        f"Machines: {'; '.join(machines)}.",
        "",
        "| device | split | recipe | epochs | runs (seeds) | test accuracy, mean ± sd "
        "| standard error of the mean "
        f"| paired vs `{ANCHOR}`, same seeds (runs) "
        "| best val acc | best epoch | s/epoch | flip TTA on the same models, gain (runs) "
        "| runs at chance (val ≤ 50%) | black and white probe | worst probe, mean (which) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['device']} | {s['strategy']} | {s['recipe']} | {s['epochs']} | {s['runs']} "
            f"({', '.join(map(str, s['seeds']))}{_folds(s)}) "
            f"| {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | {100 * s['se']:.2f} "
            f"| {_gain(s, 'paired')} | {100 * s['val_mean']:.2f} | {s['best_epoch_mean']:.0f} "
            f"| {s['seconds_per_epoch']:.2f} | {_gain(s, 'tta')} | {s['at_chance']} "
            f"| {_percent(s['grayscale_mean'])} | {_percent(s['worst_probe_mean'])}"
            f"{' (' + ', '.join(s['worst_probes']) + ')' if s['worst_probes'] else ''} |"
        )
    lines += ["", "Recipes (the params.yaml keys each run sets; bench/accuracy_recipes.yaml):", ""]
    base = recipes.get(ANCHOR, {})
    for name in sorted({s["recipe"] for s in summary}):
        recipe = recipes.get(name, {})
        if name == ANCHOR:
            lines.append(f"- `{ANCHOR}`: `{json.dumps(recipe, sort_keys=True)}`")
            continue
        changed = {k: v for k, v in recipe.items() if base.get(k) != v}
        lines.append(f"- `{name}`: `{ANCHOR}` with `{json.dumps(changed, sort_keys=True)}`")
    return "\n".join(lines) + "\n"


def _folds(summary: dict[str, Any]) -> str:
    return f"; {summary['folds']}-fold, all pooled" if summary["folds"] else ""


def _percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{100 * fraction:.2f}"


def _gain(summary: dict[str, Any], kind: str) -> str:
    """``kind`` is ``tta`` or ``paired``: a mean gain in points, with its number of runs.

    A gain that rounds to nothing is written ``0.00``: a sign there (``-0.00`` from float
    noise in a mean of +0.93 and -0.93) would claim a direction that is not measured.
    """
    if summary[f"{kind}_gain"] is None:
        return ""
    points = round(100 * summary[f"{kind}_gain"], 2)
    gain = f"{points:+.2f}" if points else "0.00"
    return f"{gain} ({summary[f'{kind}_runs']})"


def run_pending(
    args: argparse.Namespace, recipes: dict[str, dict], done: list[dict], results_file: Path
) -> tuple[list[dict], list[str]]:
    """Run what ``done`` lacks, ``args.jobs`` at a time; append each row as it comes.

    Returns the new rows and the runs that failed: one broken run is reported, not
    allowed to lose the others' hours.
    """
    args.work.mkdir(parents=True, exist_ok=True)
    raw = prepare_raw(args.work, args.archive)
    folds = range(args.folds) if args.folds else [None]
    pending = [
        (recipe, strategy, seed, fold)
        for recipe in args.recipes for strategy in args.strategies for seed in args.seeds
        for fold in folds
        if not any((d["recipe"], d["strategy"], d["seed"], d.get("fold"), d["epochs"]) ==
                   (recipe, strategy, seed, fold, args.epochs)
                   and d["overrides"] == recipes[recipe] for d in done)
    ]
    rows, failures = [], []
    # Each run is three stage processes; several at once share the cores (or one GPU).
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(run_once, args.work, raw, recipe, recipes[recipe], strategy, seed,
                        args.epochs, dvclive=not args.no_dvclive, folds=args.folds, fold=fold):
            (recipe, strategy, f"{seed}" + ("" if fold is None else f" fold {fold}"))
            for recipe, strategy, seed, fold in pending
        }
        for future in as_completed(futures):
            recipe, strategy, seed = futures[future]
            try:
                row = future.result()
            except RuntimeError as error:
                failures.append(f"{recipe} {strategy} seed {seed}")
                print(f"error: {recipe} {strategy} seed {seed}: {error}", flush=True)
                continue
            rows.append(row)
            with results_file.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(row) + "\n")
            print(f"{recipe:>16} {strategy:>8} seed {seed}: test {row['test_accuracy']:.4f} "
                  f"val {row['best_val_accuracy']:.4f} ({row['wall_seconds']:.0f} s)",
                  flush=True)
    return rows, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["blog", "blog+cutout"])
    parser.add_argument("--recipes-file", type=Path, default=RECIPES_FILE)
    parser.add_argument("--strategies", nargs="+", default=["image", "identity"],
                        choices=["image", "identity"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=0,
                        help="k-fold cross-validation: k runs per seed, each image tested once "
                        f"(validation_per_class={CV_VALIDATION_PER_CLASS}); 0 = off")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--work", type=Path, default=REPO / ".bench-accuracy",
                        help="scratch folder (git-ignored); results.jsonl there lets a run resume")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (a GPU has room for many of these small models)")
    parser.add_argument("--no-dvclive", action="store_true",
                        help="train without DVCLive curves, on a machine without DVC")
    parser.add_argument("--results", type=Path,
                        help="the runs' JSON lines (default: WORK/results.jsonl)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the report of --results")
    parser.add_argument("--report", type=Path,
                        help="the markdown report (default: WORK/report.md, not in git; name "
                        "reports/accuracy-runs.md to replace the committed one)")
    args = parser.parse_args()

    recipes = load_recipes(args.recipes_file)
    unknown = [r for r in args.recipes if r not in recipes]
    if unknown:
        raise SystemExit(f"error: {args.recipes_file}: no recipe {unknown}; have {sorted(recipes)}")
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs {args.jobs}: must be at least 1")
    if args.folds == 1 or args.folds < 0:
        raise SystemExit(f"error: --folds {args.folds}: must be 0 (off) or at least 2")
    results_file = args.results or args.work / "results.jsonl"
    done = [json.loads(line) for line in results_file.read_text().splitlines()] \
        if results_file.exists() else []
    failures: list[str] = []
    if not args.report_only:
        if not args.archive.is_file():
            raise SystemExit(f"error: {args.archive}: no such archive (--archive PATH)")
        rows, failures = run_pending(args, recipes, done, results_file)
        done += rows
    wanted = [d for d in done if d["recipe"] in args.recipes and d["epochs"] == args.epochs
              and d["overrides"] == recipes[d["recipe"]]]
    report = markdown(summarise(wanted), recipes)
    report_file = args.report or args.work / "report.md"  # never a committed report unasked
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report_file.write_text(report, encoding="utf-8")
    print(report)
    if failures:
        raise SystemExit(f"error: {', '.join(failures)} failed")


if __name__ == "__main__":
    main()
