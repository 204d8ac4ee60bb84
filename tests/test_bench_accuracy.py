"""bench/accuracy.py: runs side by side, a broken run reported without losing the others,
and CPU and GPU runs kept apart in the report."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agegap.commands import score_command
from tests.conftest import FAST_PARAMS, REPO, run

BENCH = REPO / "bench" / "accuracy.py"
FIRST_DEFAULT = "blog+batchnorm+cosine+weightdecay+smoothing+rotate+shift+tta"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_parallel_runs_without_dvclive_and_a_broken_recipe(tmp_path: Path, synthetic_zip) -> None:
    fast = {**FAST_PARAMS, "epochs": 2}
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text(yaml.safe_dump({
        "small": fast,
        "broken": {**fast, "dropout": 1.5},  # refused: a clear error, no row
    }), encoding="utf-8")
    work = tmp_path / "work"
    result = run(
        [sys.executable, str(BENCH), "--archive", str(synthetic_zip.path), "--work", str(work),
         "--recipes-file", str(recipes), "--recipes", "small", "broken",
         "--strategies", "image", "--seeds", "0", "1", "--epochs", "2", "--jobs", "3",
         "--no-dvclive", "--report", str(tmp_path / "report.md")],
        tmp_path, check=False,
    )
    assert result.returncode == 1
    assert "error: broken image seed 0, broken image seed 1 failed" in result.stderr
    assert "broken image seed 0: stage" in result.stdout and "dropout" in result.stdout

    rows = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert sorted((r["recipe"], r["seed"]) for r in rows) == [("small", 0), ("small", 1)]
    head = run(["git", "rev-parse", "--short=12", "HEAD"], REPO).stdout.strip()
    bench_code = load_bench().code_version()
    assert bench_code in (head, f"{head}+modified")
    for row in rows:
        assert row["device"] == "cpu" and row["epochs_run"] == 2
        assert 0.0 <= row["test_accuracy_tta"] <= 1.0
        assert "cores" in row["machine"]
        assert row["code"] == bench_code  # which commit trained it
        workspace = work / f"small-image-{row['seed']}"
        assert (workspace / "models" / "model.keras").is_file()
        assert not (workspace / "dvclive").exists()
        # the evaluate stage follows params (tta_flip off by default): its score is "plain"
        assert row["test_accuracy"] == row["test_accuracy_plain"]
        for key, tta_flip in (("test_accuracy_plain", False), ("test_accuracy_tta", True)):
            scored = io.StringIO()  # `agegap score --json`, in this process: no second TF start
            score_command(workspace / "data/split/test", as_json=True, tta_flip=tta_flip,
                          model_path=workspace / "models/model.keras", out=scored)
            assert row[key] == json.loads(scored.getvalue())["accuracy"], key
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| cpu | image | small | 2 | 2 (0, 1) |" in report

    # --report-only rewrites the report from the rows alone: no archive, no run
    again = tmp_path / "again.md"
    run([sys.executable, str(BENCH), "--report-only", "--results", str(work / "results.jsonl"),
         "--archive", str(tmp_path / "absent.zip"), "--recipes-file", str(recipes),
         "--recipes", "small", "--epochs", "2", "--report", str(again)], tmp_path)
    assert again.read_text(encoding="utf-8") == report


def test_cpu_and_gpu_runs_are_summarised_apart() -> None:
    bench = load_bench()
    row = {"recipe": FIRST_DEFAULT, "strategy": "identity", "epochs": 100, "seed": 0,
           "best_val_accuracy": 0.9, "best_epoch": 50, "seconds_per_epoch": 1.0}
    rows = [
        {**row, "test_accuracy": 0.80},  # stored before devices were recorded: a CPU run
        {**row, "seed": 1, "test_accuracy": 0.90, "device": "cpu"},
        {**row, "test_accuracy": 0.50, "best_val_accuracy": 0.5, "device": "gpu",
         "machine": "box, 16 CPU threads, H200"},  # training broke: flagged, still counted
    ]
    summary = {s["device"]: s for s in bench.summarise(rows)}
    assert summary["cpu"]["runs"] == 2 and abs(summary["cpu"]["mean"] - 0.85) < 1e-12
    assert summary["gpu"]["runs"] == 1 and summary["gpu"]["mean"] == 0.50
    assert (summary["cpu"]["at_chance"], summary["gpu"]["at_chance"]) == (0, 1)
    report = bench.markdown(bench.summarise(rows), {FIRST_DEFAULT: {}})
    assert "Machines: box, 16 CPU threads, H200." in report
    gpu_line = next(line for line in report.splitlines() if line.startswith("| gpu |"))
    assert gpu_line.startswith(f"| gpu | identity | {FIRST_DEFAULT} | 100 | 1 (0) | 50.00 ± 0.00 |")
    assert gpu_line.endswith("| 1 |  |  |")  # one run at chance; no probes recorded


def test_probe_columns_average_the_black_and_white_and_the_worst_probe() -> None:
    bench = load_bench()
    row = {"recipe": "blog+cutout", "strategy": "image", "epochs": 100, "best_val_accuracy": 0.9,
           "best_epoch": 50, "seconds_per_epoch": 1.0, "test_accuracy": 0.9}
    rows = [
        {**row, "seed": 0, "probes": {"grayscale": 0.60, "blur": 0.85},
         "worst_probe": "grayscale"},
        {**row, "seed": 1, "probes": {"grayscale": 0.90, "blur": 0.80}, "worst_probe": "blur"},
        {**row, "seed": 2},  # made before the probes: left out of their means
    ]
    summary = bench.summarise(rows)[0]
    assert summary["probe_runs"] == 2
    assert summary["grayscale_mean"] == pytest.approx(0.75)
    assert summary["worst_probe_mean"] == pytest.approx(0.70)  # 0.60 and 0.80
    line = bench.markdown([summary], {"blog+cutout": {}}).splitlines()[4]
    assert line.endswith("| 75.00 | 70.00 (blur, grayscale) |")


def test_each_recipe_is_paired_with_the_blog_run_on_the_same_split() -> None:
    bench = load_bench()
    row = {"strategy": "identity", "epochs": 100, "best_val_accuracy": 0.9, "best_epoch": 50,
           "seconds_per_epoch": 1.0}
    rows = [
        {**row, "recipe": "blog", "seed": 0, "test_accuracy": 0.80},
        {**row, "recipe": "blog", "seed": 1, "test_accuracy": 0.90},
        {**row, "recipe": "blog+cutout", "seed": 0, "test_accuracy": 0.84},
        {**row, "recipe": "blog+cutout", "seed": 1, "test_accuracy": 0.91},
        {**row, "recipe": "blog+cutout", "seed": 2, "test_accuracy": 0.70},  # no blog run to pair
        {**row, "recipe": "blog", "seed": 3, "test_accuracy": 0.85},
        {**row, "recipe": "blog+cutout", "seed": 3, "test_accuracy": 0.5,
         "best_val_accuracy": 0.5},  # at chance: broken training, left out of the pairs
        {**row, "recipe": "blog+cutout", "seed": 0, "test_accuracy": 0.5, "device": "gpu"},
    ]
    summary = {(s["recipe"], s["device"]): s for s in bench.summarise(rows)}
    cutout = summary[("blog+cutout", "cpu")]
    assert cutout["paired_runs"] == 2 and abs(cutout["paired_gain"] - 0.025) < 1e-12
    assert summary[("blog", "cpu")]["paired_gain"] is None
    assert summary[("blog+cutout", "gpu")]["paired_gain"] is None  # the blog ran on the CPU only
    report = bench.markdown(bench.summarise(rows), {"blog": {}, "blog+cutout": {}})
    line = next(x for x in report.splitlines() if x.startswith("| cpu | identity | blog+cutout |"))
    assert "| 73.75 ± 18.08 | 9.04 | +2.50 (2) |" in line


def test_a_gain_that_rounds_to_nothing_has_no_sign() -> None:
    bench = load_bench()
    row = {"strategy": "image", "epochs": 100, "best_val_accuracy": 0.9, "best_epoch": 50,
           "seconds_per_epoch": 1.0}
    rows = [  # seed 0 gains 0.1 points, seed 1 loses 0.1 + float noise: -0.00 unrounded
        {**row, "recipe": "blog", "seed": 0, "test_accuracy": 0.8},
        {**row, "recipe": "blog", "seed": 1, "test_accuracy": 0.9},
        {**row, "recipe": "mixup", "seed": 0, "test_accuracy": 0.801},
        {**row, "recipe": "mixup", "seed": 1, "test_accuracy": 0.9 - 0.001 - 1e-12},
    ]
    report = bench.markdown(bench.summarise(rows), {"blog": {}, "mixup": {}})
    line = next(x for x in report.splitlines() if x.startswith("| cpu | image | mixup |"))
    assert "| 85.00 ± 6.93 | 4.90 | 0.00 (2) |" in line


def test_each_row_names_the_code_that_trained_it(tmp_path: Path, monkeypatch) -> None:
    bench = load_bench()
    for folder in ("agegap", "reports"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.txt").write_text("one\n", encoding="utf-8")
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "."], tmp_path)
    run(["git", "commit", "-qm", "first"], tmp_path)
    head = run(["git", "rev-parse", "--short=12", "HEAD"], tmp_path).stdout.strip()
    monkeypatch.setattr(bench, "REPO", tmp_path)
    assert bench.code_version() == head
    (tmp_path / "reports" / "x.txt").write_text("two\n", encoding="utf-8")
    assert bench.code_version() == head  # a report is not code a run executes
    (tmp_path / "agegap" / "x.txt").write_text("two\n", encoding="utf-8")
    assert bench.code_version() == f"{head}+modified"
    monkeypatch.setattr(bench, "REPO", tmp_path / "reports")
    (tmp_path / ".git").rename(tmp_path / "not-git")
    assert bench.code_version() == "unknown (not a git checkout)"


def test_a_row_says_when_the_code_changed_during_its_run() -> None:
    bench = load_bench()
    assert bench.code_of_run("0bc44f1c3c35", "0bc44f1c3c35") == "0bc44f1c3c35"
    assert bench.code_of_run("0bc44f1c3c35", "0bc44f1c3c35+modified") == (
        "0bc44f1c3c35, then 0bc44f1c3c35+modified (changed during the run)"
    )


def test_cross_validation_pools_the_folds_and_pairs_fold_by_fold() -> None:
    bench = load_bench()
    row = {"strategy": "identity", "epochs": 100, "best_val_accuracy": 0.9, "best_epoch": 50,
           "seconds_per_epoch": 1.0, "seed": 0, "folds": 2}
    rows = [
        {**row, "recipe": "blog", "fold": 0, "test_accuracy": 0.80, "n_test": 100},
        {**row, "recipe": "blog", "fold": 1, "test_accuracy": 0.90, "n_test": 300},
        {**row, "recipe": "blog+cutout", "fold": 0, "test_accuracy": 0.85, "n_test": 100},
        {**row, "recipe": "blog+cutout", "fold": 1, "test_accuracy": 0.90, "n_test": 300},
        # the same recipe without folds is another estimate, summarised apart
        {**row, "recipe": "blog+cutout", "folds": None, "fold": None, "test_accuracy": 0.5,
         "n_test": 200},
    ]
    summary = {(s["recipe"], s["folds"]): s for s in bench.summarise(rows)}
    blog, cutout = summary[("blog", 2)], summary[("blog+cutout", 2)]
    assert blog["mean"] == pytest.approx((80 + 270) / 400)  # every image once, pooled
    assert blog["se"] == pytest.approx(np.std([0.80, 0.90], ddof=1) / np.sqrt(2))
    assert cutout["paired_gain"] == pytest.approx((0.05 + 0.0) / 2)  # fold by fold
    assert summary[("blog+cutout", None)]["runs"] == 1
    report = bench.markdown(bench.summarise(rows), {"blog": {}, "blog+cutout": {}})
    assert "| 2 (0; 2-fold, all pooled) | 87.50 ± 7.07 | 5.00 |" in report
