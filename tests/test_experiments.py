"""The study flow (``flows.experiments``) on a synthetic archive in a temporary git repo.

One study run covers the three promises: a row x two repeats x one epoch gives a
report with means and standard deviations; a row with an invalid override is
reported failed while the other completes; the rows come from a study file the test
writes itself, so adding a row needs no code change.
"""

from __future__ import annotations

# First: it points Prefect at a temporary home before anything imports prefect.
from tests.prefect_fixtures import prefect_harness  # noqa: F401 - a fixture

# isort: split
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.experiments import load_study, plan_runs, select_rows, study
from tests.conftest import run

pytestmark = [
    pytest.mark.slow,
    # Two queued trainings: minutes on 2 cores, more when the machine is shared.
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

ROWS = [
    {"name": "wide-dropout", "set": {"dropout": 0.5}, "blog": {"test_accuracy": 0.83}},
    {"name": "too-big-kernel", "set": {"kernel_size": 40, "padding": "valid"}},
]


def test_the_study_file_is_data(tmp_path: Path) -> None:
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"rows": ROWS}), encoding="utf-8")
    rows = load_study(path)
    assert [row.name for row in rows] == ["wide-dropout", "too-big-kernel"]
    assert [row.name for row in select_rows(rows, ["too-big-kernel"])] == ["too-big-kernel"]
    runs = plan_runs(rows[:1], repeats=3, epochs=2, study="s")
    assert [(r.name, r.overrides["seed"], r.overrides["split_seed"]) for r in runs] == [
        ("s-wide-dropout-s0", 0, 0),
        ("s-wide-dropout-s1", 1, 1),
        ("s-wide-dropout-s2", 2, 2),
    ]
    assert all(r.overrides["epochs"] == 2 and r.overrides["dropout"] == 0.5 for r in runs)


def test_the_projects_study_has_the_blogs_rows() -> None:
    rows = load_study(Path(__file__).resolve().parents[1] / "experiments.yaml")
    assert [row.name for row in rows] == [
        "baseline", "dropout-0.2", "adam", "kernel-5", "dropout-0.1", "padding-valid",
        "prelu", "leaky-relu", "batch-8", "batch-16", "batch-32", "deeper",
    ]  # fmt: skip
    best = {row.name: row for row in rows}["dropout-0.1"]
    assert best.overrides["kernel_size"] == 5 and best.overrides["dropout"] == 0.1
    assert best.blog is not None and best.blog["test_accuracy"] == 0.9124


def test_two_rows_two_repeats_and_a_failing_row(
    prefect_harness: str,  # noqa: F811 - the fixture imported above
    synthetic_zip: Any,
    make_project: Callable[..., Path],
) -> None:
    project = make_project(synthetic_zip.path)
    (project / "experiments.yaml").write_text(yaml.safe_dump({"rows": ROWS}), encoding="utf-8")
    # Data stages once, committed, so each queued experiment only trains and evaluates.
    run(["dvc", "repro", "average_faces"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "data stages"], project)

    state = study(workspace=str(project), repeats=2, epochs=1, jobs=2, return_state=True)
    assert state.is_completed(), state.message
    table = {line["row"]: line for line in state.result()}

    assert table["wide-dropout"]["runs"] == "2/2"
    assert 0.0 <= table["wide-dropout"]["test_accuracy_mean"] <= 1.0
    assert table["wide-dropout"]["test_accuracy_std"] is not None
    assert table["wide-dropout"]["test_loss_mean"] > 0
    assert table["too-big-kernel"]["runs"] == "0/2"
    assert "shrinks a 32px image to nothing" in table["too-big-kernel"]["errors"]

    # The default folder is not in git: the committed report stays as it was.
    assert run(["git", "status", "--porcelain", "reports"], project).stdout == ""
    report = (project / ".experiments" / "experiments.md").read_text(encoding="utf-8")
    assert "| wide-dropout | 2/2 |" in report
    assert " ± " in report
    assert "| too-big-kernel | 0/2 | failed |" in report
    assert "shrinks a 32px image to nothing" in report
    assert (project / ".experiments" / "experiments.png").stat().st_size > 0

    shown = run(["dvc", "exp", "list", "--name-only"], project).stdout.split()
    assert sum(name.endswith(("-s0", "-s1")) for name in shown) == 2
