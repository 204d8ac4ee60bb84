"""The study report is made from ``dvc exp show`` output alone: a fixed output
(tests/data/exp_show.json, in DVC's own shape) gives a fixed report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from flows.study_plan import load_study, plan_runs
from flows.study_report import experiments_of, markdown, study_records, summarise, write_chart

DATA = Path(__file__).resolve().parent / "data"
SHOWN = json.loads((DATA / "exp_show.json").read_text(encoding="utf-8"))
STUDY = load_study(DATA / "study_small.yaml")
MACHINE = {"device": "cpu", "cpu": "AMD EPYC, 2 cores", "accelerator": "cpu",
           "precision": "mixed_bfloat16"}
RUN_INFO = {
    "01" * 20: {**MACHINE, "seconds_per_epoch": 2.0},
    "02" * 20: {**MACHINE, "seconds_per_epoch": 3.0},
    "04" * 20: {**MACHINE, "seconds_per_epoch": 4.0},
}


def records(study=STUDY):
    return study_records(plan_runs(study, study.rows), SHOWN, RUN_INFO)


def test_only_finished_experiments_count() -> None:
    names = [rev["name"] for rev in experiments_of(SHOWN)]
    assert "my-own-experiment" in names  # finished, though no study's
    assert len(names) == 5  # the failed queue entry is left out


def test_each_planned_run_finds_its_newest_experiment_by_identity() -> None:
    found = records()
    assert [(r["row"], r["seed"]) for r in found] == [("blog", 0), ("blog", 1), ("blog+cutout", 0)]
    cutout = found[2]
    assert cutout["rev"] == "04" * 20 and cutout["test_accuracy"] == 0.84  # not the older 0.50
    assert cutout["seconds_per_epoch"] == 4.0
    assert cutout["machine"] == "AMD EPYC, 2 cores, cpu, mixed_bfloat16"
    assert cutout["worst_probe"] == "grayscale" and cutout["probes"]["blur"] == 0.82


def test_a_renamed_row_keeps_its_runs_and_a_changed_row_does_not() -> None:
    renamed = replace(STUDY, rows=[replace(STUDY.rows[0], name="the-blog"), STUDY.rows[1]])
    assert [r["row"] for r in records(renamed)] == ["the-blog", "the-blog", "blog+cutout"]
    changed = replace(STUDY, rows=[STUDY.rows[0], replace(
        STUDY.rows[1], overrides={**STUDY.rows[1].overrides, "augment_cutout": 0.3})])
    assert [r["row"] for r in records(changed)] == ["blog", "blog"]


def test_rows_that_set_the_same_params_share_their_experiments() -> None:
    twin = replace(STUDY, rows=[*STUDY.rows, replace(STUDY.rows[0], name="blog-again")])
    found = records(twin)
    assert [(r["row"], r["seed"]) for r in found] == [
        ("blog", 0), ("blog", 1), ("blog+cutout", 0), ("blog-again", 0), ("blog-again", 1)]
    assert found[3]["rev"] == found[0]["rev"]


def test_the_summary_pairs_each_row_with_the_baseline_on_the_same_splits() -> None:
    summary = {s["row"]: s for s in summarise(records(), STUDY.baseline)}
    blog, cutout = summary["blog"], summary["blog+cutout"]
    assert blog["mean"] == pytest.approx(0.85) and blog["std"] == pytest.approx(0.0707107)
    assert blog["se"] == pytest.approx(0.05) and blog["seeds"] == [0, 1]
    assert blog["paired_gain"] is None
    assert cutout["runs"] == 1 and cutout["paired_runs"] == 1
    assert cutout["paired_gain"] == pytest.approx(0.04)  # seed 0 only: seed 1 failed
    assert blog["grayscale"] == pytest.approx(0.65) and blog["worst_probe"] == pytest.approx(0.65)
    assert blog["seconds_per_epoch"] == pytest.approx(2.5)


def test_the_markdown_report(tmp_path: Path) -> None:
    summary = summarise(records(), STUDY.baseline)
    chart = write_chart(STUDY, summary, tmp_path / "study_small.png")
    assert chart.stat().st_size > 0
    text = markdown(STUDY, summary, commit="ab" * 20, chart=chart.name, records=records(),
                    failures={"blog-cutout-identity-s1-d705d81e44": "error: out of memory"})
    lines = text.splitlines()
    assert lines[0] == "# Study `study_small`"
    assert "commit `abababababab`" in text
    assert "Machines: AMD EPYC, 2 cores, cpu, mixed_bfloat16." in text
    assert "| cpu | identity | blog | 100 | 2 (0, 1) | 85.00 ± 7.07 | 5.00 |  | 0.400 | 86.50 " \
           "| 50 | 2.50 | 0 | 65.00 | 65.00 (grayscale) | 20.00 (grayscale) |  |  |" in lines
    assert "| cpu | identity | blog+cutout | 100 | 1 (0) | 84.00 |  | +4.00 (1) " \
           "| 0.400 | 86.00 | 50 | 4.00 | 0 | 80.00 | 80.00 (grayscale) | 4.00 (grayscale) " \
           "| 88.00 | 90.00 |" in lines
    assert '- `blog+cutout`: cutout; `blog` with `{"augment_cutout": 0.4}`' in lines
    assert "- `blog-cutout-identity-s1-d705d81e44`: error: out of memory" in lines
    every_run = lines[lines.index("## Every run") + 2:]
    assert every_run[0] == "| row | split | seed | fold | epochs | clean | grayscale | blur " \
                           "| worst probe | gap | test loss | experiment |"
    assert every_run[2:5] == [
        "| blog | identity | 0 |  | 100 | 80.00 | 60.0 | 78.0 | grayscale | 20.0 | 0.400 "
        "| `0101010` |",
        "| blog | identity | 1 |  | 100 | 90.00 | 70.0 | 86.0 | grayscale | 20.0 | 0.400 "
        "| `0202020` |",
        "| blog+cutout | identity | 0 |  | 100 | 84.00 | 80.0 | 82.0 | grayscale | 4.0 | 0.400 "
        "| `0404040` |",
    ]
    assert "![test accuracy by row](study_small.png)" in lines


def test_without_a_baseline_the_rows_shared_keys_are_listed_once() -> None:
    study = replace(STUDY, baseline=None)
    text = markdown(study, summarise(records(study), None), commit="ab" * 20)
    listed = [line for line in text.splitlines() if line.startswith("- ")]
    assert listed == [
        f"- every row: `{json.dumps(STUDY.rows[0].overrides, sort_keys=True)}`",
        "- `blog`: nothing more",
        '- `blog+cutout`: cutout; `{"augment_cutout": 0.4}`',
    ]
    assert "augment_cutout" not in STUDY.rows[0].overrides


def record(row: str, seed: int, accuracy: float, **extra) -> dict:
    base = {"row": row, "strategy": "identity", "seed": seed, "fold": None, "folds": None,
            "epochs": 100, "device": "cpu", "machine": "", "test_accuracy": accuracy,
            "test_loss": 0.4, "n_test": 200, "probes": {}, "worst_probe": None, "gap": None,
            "best_val_accuracy": 0.9, "best_epoch": 50, "seconds_per_epoch": 1.0}
    return {**base, **extra}


def test_runs_at_chance_are_flagged_and_left_out_of_the_pairs() -> None:
    rows = [record("blog", 0, 0.80), record("blog", 1, 0.90), record("x", 0, 0.84),
            record("x", 1, 0.5, best_val_accuracy=0.5),
            record("x", 0, 0.7, device="gpu")]  # no blog run on the GPU to pair with
    summary = {(s["row"], s["device"]): s for s in summarise(rows, "blog")}
    assert summary[("x", "cpu")]["at_chance"] == 1 and summary[("x", "cpu")]["paired_runs"] == 1
    assert summary[("x", "cpu")]["mean"] == pytest.approx(0.67)  # still in the mean
    assert summary[("x", "gpu")]["paired_gain"] is None


def test_a_gain_that_rounds_to_nothing_has_no_sign() -> None:
    rows = [record("blog", 0, 0.8), record("blog", 1, 0.9),
            record("x", 0, 0.801), record("x", 1, 0.9 - 0.001 - 1e-12)]
    text = markdown(STUDY, summarise(rows, "blog"), commit="0" * 40)
    line = next(x for x in text.splitlines() if x.startswith("| cpu | identity | x |"))
    assert "| 85.00 ± 6.93 | 4.90 | 0.00 (2) |" in line


def test_cross_validation_pools_the_folds_and_pairs_fold_by_fold() -> None:
    cv = {"folds": 2}
    rows = [record("blog", 0, 0.80, fold=0, n_test=100, **cv),
            record("blog", 0, 0.90, fold=1, n_test=300, **cv),
            record("x", 0, 0.85, fold=0, n_test=100, **cv),
            record("x", 0, 0.90, fold=1, n_test=300, **cv),
            record("x", 0, 0.5, n_test=200)]  # the same row without folds: summarised apart
    summary = {(s["row"], s["folds"]): s for s in summarise(rows, "blog")}
    assert summary[("blog", 2)]["mean"] == pytest.approx((80 + 270) / 400)  # every image once
    assert summary[("x", 2)]["paired_gain"] == pytest.approx(0.025)
    assert summary[("x", None)]["runs"] == 1
    text = markdown(STUDY, summarise(rows, "blog"), commit="0" * 40,
                    records=[{**r, "rev": f"{i}" * 40} for i, r in enumerate(rows)])
    assert "| 2 (0; 2-fold, pooled) | 87.50 ± 7.07 | 5.00 |" in text
    assert "| x | identity | 0 | 1 | 100 | 90.00 |  |  | 0.400 | `3333333` |" in text


def test_a_study_under_way_lists_the_runs_it_lacks() -> None:
    rows = [record("blog", 0, 0.8)]
    text = markdown(STUDY, summarise(rows, "blog"), commit="0" * 40,
                    failures={"x-identity-s0-1111111111": "Failed: out of memory"},
                    missing=["blog-identity-s1-2222222222", "x-identity-s1-3333333333"])
    assert "## Failed runs\n\n- `x-identity-s0-1111111111`: Failed: out of memory" in text
    assert ("## Not done yet (2)\n\n- `blog-identity-s1-2222222222`\n"
            "- `x-identity-s1-3333333333`") in text
    assert "Not done yet" not in markdown(STUDY, summarise(rows, "blog"), commit="0" * 40)


def test_the_largest_gap_is_of_the_probes_means_pooled_under_cross_validation() -> None:
    """The goals bound each probe's mean gap to clean accuracy; the mean of each run's own
    worst probe would count two different weaknesses as one."""
    rows = [record("x", 0, 0.90, probes={"a": 0.80, "b": 0.88}),
            record("x", 1, 0.90, probes={"a": 0.89, "b": 0.82})]
    (line,) = summarise(rows, None)
    assert line["worst_probe"] == pytest.approx(0.81)
    assert line["largest_gap"][1] == "a" and line["largest_gap"][0] == pytest.approx(0.055)
    cv = {"folds": 2}
    folds = [record("x", 0, 0.80, fold=0, n_test=100, probes={"a": 0.70}, **cv),
             record("x", 0, 0.90, fold=1, n_test=300, probes={"a": 0.90}, **cv)]
    (pooled,) = summarise(folds, None)
    assert pooled["largest_gap"] == (pytest.approx(0.875 - 0.85), "a")
