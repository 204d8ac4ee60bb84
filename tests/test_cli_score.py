"""``agegap score`` on the test split of a trained project reproduces the evaluate stage.

Both go through :mod:`agegap.scoring`; this checks, end to end with ``dvc repro`` and
the installed console script, that the folder loading and the model agree too: the
numbers must be equal, not merely close.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import Reproduced, run

SCORE_KEYS = ("accuracy", "loss", "precision", "recall", "f1", "roc_auc")


@pytest.mark.slow
def test_score_on_test_split_equals_evaluate_metrics(reproduced: Reproduced) -> None:
    project = reproduced.folder  # read only
    metrics = json.loads((project / "metrics.json").read_text(encoding="utf-8"))

    agegap = Path(sys.executable).parent / "agegap"
    result = run(
        [
            str(agegap),
            "score",
            str(project / "data" / "split" / "test"),
            "--json",
            "--probes",
            "--model",
            str(project / "models" / "model.keras"),
        ],  # no --tta-flip: in the project folder, score follows params.yaml's tta_flip
        project,
    )
    scores = json.loads(result.stdout)
    assert scores["failed"] == []
    assert scores["n_images"] == metrics["n_test"]
    assert {key: scores[key] for key in SCORE_KEYS} == {key: metrics[key] for key in SCORE_KEYS}
    # and the confusion matrix is the one the stage wrote, row by row
    confusion = (project / "plots" / "evaluate" / "confusion.csv").read_text(encoding="utf-8")
    pairs = [line.split(",") for line in confusion.splitlines()[1:]]
    counts = [[0, 0], [0, 0]]
    for actual, predicted in pairs:
        counts[actual == "young"][predicted == "young"] += 1
    assert scores["confusion"] == counts

    # the robustness probes: the same numbers as the evaluate stage's
    for key in ("probes", "robustness", "by_colour"):
        assert scores[key] == metrics[key], key

    # run from the project folder with the defaults, as the README shows it
    table = run([str(agegap), "score", "data/split/test", "--probes"], project).stdout
    assert f"accuracy   {metrics['accuracy']:.4f}" in table
    assert f"worst probe: {metrics['robustness']['worst_probe']}" in table
    assert "grayscale images:" in table
