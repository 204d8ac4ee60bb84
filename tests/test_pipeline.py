"""End to end: `dvc repro`, `dvc exp run -S`, `dvc metrics diff` in a temporary git repo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Reproduced, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(reproduced: Reproduced, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's reproduced project, shared by the tests below (which change it)."""
    for stage in ("download", "split", "average_faces", "train", "evaluate"):
        assert f"Running stage '{stage}'" in reproduced.stdout
    return reproduced.copy(tmp_path_factory.mktemp("pipeline") / "project")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_repro_learns_and_a_second_repro_runs_nothing(project: Path) -> None:
    metrics = read_json(project / "metrics.json")
    assert metrics["accuracy"] >= 0.85, metrics  # dark vs bright faces: far above chance
    assert set(metrics) >= {"accuracy", "loss", "precision", "recall", "f1", "roc_auc",
                            "n_test", "best_epoch"}
    assert metrics["n_test"] == 20  # what remains after 2 x (20 + 10)
    probes = metrics["probes"]
    assert len(probes) == 11 and all(0 <= value <= 1 for value in probes.values())
    robustness = metrics["robustness"]
    assert probes[robustness["worst_probe"]] == robustness["worst_probe_accuracy"]
    assert robustness["worst_probe_accuracy"] == min(probes.values())
    assert robustness["gap"] == metrics["accuracy"] - robustness["worst_probe_accuracy"]
    assert sum(group["n"] for film in metrics["by_colour"].values()
               for group in film.values()) == metrics["n_test"]
    csv_rows = (project / "plots/evaluate/probes.csv").read_text().splitlines()
    assert csv_rows[0] == "probe,accuracy" and len(csv_rows) == 1 + 1 + len(probes)
    for path in ("models/model.keras", "plots/average_faces/average_faces.png",
                 "plots/evaluate/misclassified.png", "plots/evaluate/confusion.csv",
                 "plots/evaluate/probe_examples.png",
                 "dvclive/plots/metrics/train/accuracy.tsv", "train_metrics.json"):
        assert (project / path).exists(), path
    assert any((project / "logs").rglob("*tfevents*"))
    # Speed and machine go with the run, not among the metrics DVC compares.
    trained = read_json(project / "train_metrics.json")
    how = read_json(project / "train_run.json")
    assert {"seconds_per_epoch", "precision", "precision_reason", "cpu", "cpu_features",
            "backend"} <= set(how)
    assert how["precision"] == "float32" and how["precision_reason"] == "set in params.yaml"
    assert not set(trained) & set(how), set(trained) & set(how)
    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout


def test_the_kept_model_is_the_best_epochs(project: Path) -> None:
    from agegap.dataset import load_split
    from agegap.model import load_trained_model
    from agegap.params import load_params
    from agegap.scoring import predict_probabilities, score_predictions

    params = load_params(project / "params.yaml")
    trained = read_json(project / "train_metrics.json")
    history = [float(line.split("\t")[-1]) for line in
               (project / "dvclive/plots/metrics/eval/accuracy.tsv").read_text().splitlines()[1:]]
    assert trained["best_epoch"] == int(np.argmax(history)) + 1
    validation = load_split("validation", params.image_size, project)
    model = load_trained_model(project / "models/model.keras")
    scores = score_predictions(validation.labels, predict_probabilities(model, validation.images))
    assert scores.accuracy == pytest.approx(trained["best_val_accuracy"], abs=1e-6)
    assert scores.accuracy == max(history)


def test_retraining_gives_identical_metrics(project: Path) -> None:
    before = {name: (project / name).read_bytes()
              for name in ("metrics.json", "train_metrics.json")}
    run(["dvc", "repro", "--force", "--single-item", "train"], project)
    run(["dvc", "repro", "--force", "--single-item", "evaluate"], project)
    for name, content in before.items():
        assert (project / name).read_bytes() == content, name


def test_exp_run_changes_only_training_and_metrics_diff_shows_it(project: Path) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline results"], project)
    result = run(["dvc", "exp", "run", "-S", "dropout=0.3", "-S", "epochs=2"], project)
    assert "Running stage 'train'" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    for stage in ("download", "split", "average_faces"):
        assert f"Running stage '{stage}'" not in result.stdout
    diff = run(["dvc", "metrics", "diff", "--json"], project)
    changed = json.loads(diff.stdout)
    assert "train_metrics.json" in changed or "metrics.json" in changed
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    assert "0.3" in json.dumps(shown)
    plots = json.loads(run(["dvc", "plots", "diff", "--json"], project).stdout)["data"]
    curves = plots["Training curves"][0]
    assert set(curves["revisions"]) == {"workspace", "HEAD"}
    assert {"Confusion matrix", "ROC", "Precision-recall"} <= set(plots)


def test_an_invalid_value_fails_before_training(project: Path) -> None:
    """End to end through DVC; every key's message is covered in tests/test_params.py."""
    result = run(["dvc", "exp", "run", "-S", "activation=swishy"], project, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "activation='swishy' is invalid" in output
    assert "Epoch 1/" not in output
    run(["git", "checkout", "--", "params.yaml"], project)
