"""Study files: the project's studies load, runs are named by what they run, and a bad
file gets one line naming it and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agegap.errors import AgegapError
from agegap.params import load_params, param_names, params_from_dict
from flows.study_plan import (
    CV_VALIDATION_PER_CLASS,
    identity_of,
    load_study,
    plan_runs,
    run_identity,
    runs_to_make,
    select_rows,
    study_path,
)

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_the_blog_study_has_the_blogs_rows_and_figures() -> None:
    study = load_study(study_path(REPO, "blog"))
    assert [row.name for row in study.rows] == [
        "baseline", "dropout-0.2", "adam", "kernel-5", "dropout-0.1", "padding-valid",
        "prelu", "leaky-relu", "batch-8", "batch-16", "batch-32", "deeper",
    ]  # fmt: skip
    best = study.row("dropout-0.1")
    assert best.overrides["kernel_size"] == 5 and best.overrides["dropout"] == 0.1
    assert best.reference is not None and best.reference["test_accuracy"] == 0.9124
    assert study.row("baseline").overrides["optimizer"] == "rmsprop"  # the base, unchanged


@pytest.mark.parametrize("name", ["blog", "accuracy"])
def test_every_row_of_the_projects_studies_is_valid_params(name: str) -> None:
    study = load_study(study_path(REPO, name))
    for row in study.rows:
        assert not set(row.overrides) - set(param_names()), row.name  # a typo would be ignored
        params_from_dict({**row.overrides, **study.every_run}, source=f"{name}:{row.name}")


def test_the_blog_recipe_is_the_same_in_both_studies() -> None:
    """Both spell it out whole, so each means it whatever params.yaml's defaults are."""
    blog_study, accuracy = (load_study(study_path(REPO, n)) for n in ("blog", "accuracy"))
    blog = {**blog_study.row("dropout-0.1").overrides, **blog_study.every_run}
    protocol = {**accuracy.row("blog").overrides, **accuracy.every_run}
    assert blog == protocol
    assert set(blog) >= set(param_names()) - {
        "data_url", "data_sha256", "image_size", "split_strategy", "split_seed",
        "train_per_class", "validation_per_class", "test_per_class", "cv_folds", "cv_fold",
        "epochs", "seed", "precision", "deterministic",
    }  # fmt: skip


def test_one_network_is_one_experiment_across_rows_and_studies() -> None:
    """The blog's batch-16 row is its dropout-0.1 row, which is the accuracy study's blog
    row on the identity split: one experiment serves all three."""
    blog = load_study(study_path(REPO, "blog"))
    protocol = load_study(study_path(REPO, "accuracy"))
    runs = plan_runs(blog, blog.rows, seeds=[0, 1])
    chosen = {r.seed: r.identity for r in runs if r.row == "dropout-0.1"}
    assert chosen == {r.seed: r.identity for r in runs if r.row == "batch-16"}
    assert chosen == {r.seed: r.identity for r in plan_runs(
        protocol, [protocol.row("blog")], seeds=[0, 1], strategies=["identity"])}
    to_make = runs_to_make(runs, done={chosen[0]})
    assert len(runs) == 24 and len(to_make) == 21  # 22 networks, one already trained
    assert [r.row for r in to_make].count("batch-16") == 0
    assert [r.row for r in to_make].count("dropout-0.1") == 1


def test_the_accuracy_protocol_runs_its_default_rows_unless_told() -> None:
    study = load_study(study_path(REPO, "accuracy"))
    default = "blog+batchnorm+cosine+fullepochs+cutout+gray+jitter+scale0.3+blur+200epochs"
    assert [r.name for r in select_rows(study, None)] == ["blog", default]
    assert [r.name for r in select_rows(study, ["blog+mixup"])] == ["blog+mixup"]
    runs = plan_runs(study, select_rows(study, None))
    assert len(runs) == 2 * 2 * 3 and study.baseline == "blog"
    assert {(r.strategy, r.seed) for r in runs} == {
        (s, seed) for s in ("image", "identity") for seed in (0, 1, 2)
    }
    assert {r.row: r.overrides["epochs"] for r in runs} == {"blog": 100, default: 200}


def test_the_default_row_is_params_yaml_and_its_runs_are_the_longer_schedules() -> None:
    """The default row is the recipe params.yaml trains, and its runs are the very
    experiments of its 100-epoch row run with ``--epochs 200``: the protocol ran those
    before the row existed, and they still count."""
    study = load_study(study_path(REPO, "accuracy"))
    default = study.row(study.default_rows[1])
    trained = params_from_dict(default.overrides, source="accuracy")
    assert trained == load_params(REPO / "params.yaml")
    shorter = study.row(default.name.removesuffix("+200epochs"))
    assert [r.identity for r in plan_runs(study, [default])] == [
        r.identity for r in plan_runs(study, [shorter], extra={"epochs": 200})]


def test_runs_cross_seeds_strategies_and_folds(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, {
        "seeds": [3], "split_strategies": ["image"], "folds": 2,
        "rows": [{"name": "a+b", "set": {"dropout": 0.2}}],
    }))
    runs = plan_runs(study, study.rows)
    assert [(r.seed, r.strategy, r.fold) for r in runs] == [(3, "image", 0), (3, "image", 1)]
    assert runs[1].overrides == {
        "dropout": 0.2, "seed": 3, "split_seed": 3, "split_strategy": "image",
        "cv_folds": 2, "cv_fold": 1, "validation_per_class": CV_VALIDATION_PER_CLASS,
    }
    assert runs[1].name == f"a-b-image-s3-f1-{runs[1].identity}"
    again = plan_runs(study, study.rows, seeds=[0, 1], strategies=["identity"], folds=0,
                      extra={"epochs": 2})
    assert [(r.seed, r.strategy, r.fold, r.overrides["epochs"]) for r in again] == [
        (0, "identity", None, 2), (1, "identity", None, 2)
    ]


def test_a_runs_identity_is_what_it_sets_not_how_the_file_orders_it() -> None:
    assert run_identity({"a": 1, "b": [1, 2]}) == run_identity({"b": [1, 2], "a": 1})
    assert run_identity({"a": 1}) != run_identity({"a": 2})
    study = load_study(study_path(REPO, "accuracy"))
    runs = plan_runs(study, study.rows)
    assert len({r.identity for r in runs}) == len(runs)
    for run in runs:  # valid git refs of at most 100 characters that keep their identity
        assert len(run.name) <= 100 and identity_of(run.name) == run.identity
        assert all(c.isalnum() or c in "-_" for c in run.name)
    assert identity_of("exp-1a2b3") is None and identity_of("my-experiment") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"rows": []}, "expected a non-empty list under 'rows:'"),
        ({"rows": [{"set": {}}]}, "row 1 needs a 'name'"),
        ({"rows": [{"name": "a"}, {"name": "a"}]}, "duplicate row names: a"),
        ({"rows": [{"name": "a", "set": [1]}]}, "row 'a': 'set' must be a mapping"),
        ({"rows": [{"name": "a", "sett": {}}]}, "row 'a': unknown key(s) sett"),
        ({"row": []}, "unknown key(s) row"),
        ({"seeds": [], "rows": [{"name": "a"}]}, "'seeds' must be a non-empty list of integers"),
        ({"split_strategies": ["random"], "rows": [{"name": "a"}]}, "'split_strategies' must"),
        ({"folds": 1, "rows": [{"name": "a"}]}, "'folds' 1: must be 0"),
        ({"baseline": "b", "rows": [{"name": "a"}]}, "baseline 'b' is not a row"),
        ({"default_rows": ["b"], "rows": [{"name": "a"}]}, "'default_rows' must be a list"),
    ],
)
def test_a_bad_study_file_is_one_line_naming_it(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(AgegapError) as error:
        load_study(write(tmp_path, spec))
    assert str(error.value).startswith(str(tmp_path / "trial.yaml"))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_rows_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AgegapError, match="no such study file"):
        load_study(study_path(tmp_path, "nothing"))
    study = load_study(study_path(REPO, "blog"))
    with pytest.raises(AgegapError, match=r"unknown row\(s\) nope in study blog"):
        select_rows(study, ["adam", "nope"])
