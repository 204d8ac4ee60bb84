"""A study run as real DVC experiments on DVC's queue, in a temporary git repo.

One study covers the promises: two seeds of a row become two named experiments and a
report with mean and spread; a row with an invalid override is reported failed with
its reason while the other runs; a rerun runs nothing that exists, even after the row
is renamed; a bundle file carries the experiments to another clone; the study file is
data the test writes itself.
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

from flows.experiments import main, run_study
from flows.study_plan import identity_of
from tests.conftest import run

pytestmark = [
    pytest.mark.slow,
    # Two queued trainings: minutes on 2 cores, more when the machine is shared.
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]


def trial_study(good_row: str) -> dict[str, Any]:
    return {
        "seeds": [0, 1],
        "split_strategies": ["image"],
        "set": {"epochs": 1},
        "rows": [
            {"name": good_row, "set": {"dropout": 0.5}, "reference": {"test_accuracy": 0.83}},
            {"name": "too-big-kernel", "set": {"kernel_size": 40, "padding": "valid"}},
        ],
    }


def experiments(project: Path) -> list[str]:
    return run(["dvc", "exp", "list", "--name-only"], project).stdout.split()


def test_a_study_runs_what_is_missing_and_reports_from_dvc(
    prefect_harness: str,  # noqa: F811 - the fixture imported above
    synthetic_zip: Any,
    make_project: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = make_project(synthetic_zip.path)
    trial = project / "studies" / "trial.yaml"
    trial.parent.mkdir(exist_ok=True)
    trial.write_text(yaml.safe_dump(trial_study("wide-dropout")), encoding="utf-8")
    # Data stages once, committed, so each queued experiment only trains and evaluates.
    run(["dvc", "repro", "average_faces"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "data stages"], project)

    # One worker for two experiments: it takes the second when the first is done, and
    # each goes into the bundle file as it succeeds.
    bundle = "reports/studies/trial.bundle"
    state = run_study(workspace=str(project), study="trial", jobs=1, bundle=bundle,
                      return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    (line,) = result["summary"]
    assert (line["row"], line["strategy"], line["runs"], line["seeds"]) == (
        "wide-dropout", "image", 2, [0, 1]
    )
    assert 0.0 <= line["mean"] <= 1.0 and line["std"] is not None and line["test_loss"] > 0
    assert line["seconds_per_epoch"] > 0  # from each experiment's train_run.json
    assert sorted(name.split("-")[:4] == ["too", "big", "kernel", "image"]
                  for name in result["failures"]) == [True, True]
    assert all("shrinks a 32px image to nothing" in why for why in result["failures"].values())
    made = experiments(project)
    assert len(made) == 2 and all(name.startswith("wide-dropout-image-s") for name in made)
    assert all(identity_of(name) for name in made)
    heads = run(["git", "bundle", "list-heads", bundle], project).stdout.splitlines()
    assert sorted(head.rsplit("/", 1)[-1] for head in heads) == sorted(made)

    # The default report folder is not in git: nothing committed changes.
    assert run(["git", "status", "--porcelain", "reports"], project).stdout == f"?? {bundle}\n"
    report = (project / ".studies" / "trial.md").read_text(encoding="utf-8")
    assert "| cpu | image | wide-dropout | 1 | 2 (0, 1) |" in report
    assert "| 83.00 |" in report  # the row's reference figure
    assert "## Failed runs" in report and "shrinks a 32px image to nothing" in report
    assert (project / ".studies" / "trial.png").stat().st_size > 0

    # Renamed, the row is the same runs: the command runs nothing new, and still says
    # which runs failed, with exit status 1.
    trial.write_text(yaml.safe_dump(trial_study("dropout-0.5")), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_status:
        main(["trial", "--workspace", str(project), "--jobs", "2", "--bundle", bundle])
    assert exit_status.value.code == 1
    assert sorted(experiments(project)) == sorted(made)
    # The bundle carries both experiments to a clone that never ran them.
    clone = project.parent / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], project.parent)
    run(["git", "fetch", "-q", str(project / bundle), "refs/exps/*:refs/exps/*"], clone)
    assert sorted(experiments(clone)) == sorted(made)
    report = (project / ".studies" / "trial.md").read_text(encoding="utf-8")
    assert "| cpu | image | dropout-0.5 | 1 | 2 (0, 1) |" in report
    err = capsys.readouterr().err
    assert "failed: too-big-kernel-image-s0-" in err and "2 run(s) failed" in err

    # A report of the study so far runs nothing, and names the runs it lacks.
    assert main(["trial", "--workspace", str(project), "--rows", "dropout-0.5",
                 "--seeds", "0", "1", "2", "--report-only"]) == 0
    assert sorted(experiments(project)) == sorted(made)
    report = (project / ".studies" / "trial.md").read_text(encoding="utf-8")
    assert "| cpu | image | dropout-0.5 | 1 | 2 (0, 1) |" in report
    assert "## Not done yet (1)\n\n- `dropout-0-5-image-s2-" in report

    # Bad input stops before anything runs: one line, exit 1.
    with pytest.raises(SystemExit) as exit_status:
        main(["trial", "--workspace", str(project), "--rows", "nope"])
    assert exit_status.value.code == 1
    assert "--rows: unknown row(s) nope in study trial" in capsys.readouterr().err
