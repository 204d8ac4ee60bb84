"""`dvc repro` on the real LAG archive, one epoch (skipped where the archive is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_project, run

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def test_one_epoch_on_the_real_archive(tmp_path: Path, real_archive: Path) -> None:
    folder = copy_project(
        tmp_path / "real",
        real_archive,
        image_size=100,
        train_per_class=1200,
        validation_per_class=600,
        test_per_class=110,
        conv_filters=[32, 32, 64],
        kernel_size=5,
        dense_units=64,
        batch_size=16,
        learning_rate=0.001,
        epochs=1,
        train_images_per_epoch=1200,
        precision="auto",
    )
    run(["dvc", "repro"], folder)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    split = json.loads((folder / "data/split/report.json").read_text(encoding="utf-8"))
    assert split["identities_shared_between_splits"] == 0
    assert metrics["n_test"] == sum(split["counts"]["test"].values())
    assert 0.5 <= metrics["accuracy"] <= 1.0  # one epoch: better than nothing, not more
    assert metrics["best_epoch"] == 1
