"""The average_faces stage: correct means, the figure and the sample grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegap.layout import SPLIT_DIR
from agegap.params import Params
from agegap.split_manifest import read_split
from stages.average_faces import OUTPUT_DIR, average_faces
from stages.download import download
from stages.split import split


@pytest.mark.slow
def test_means_are_the_pixel_means_of_each_group(tmp_path: Path, synthetic_zip) -> None:
    params = Params(
        data_url=str(synthetic_zip.path),
        image_size=32,
        train_per_class=20,
        validation_per_class=10,
        test_per_class=10,
    )
    download(params, tmp_path)
    split(params, tmp_path)
    means = average_faces(params, tmp_path)
    assert set(means) == {f"{s}/{c}" for s in ("train", "validation", "test")
                          for c in ("old", "young")}
    manifest = read_split(tmp_path)
    rows = manifest[(manifest["split"] == "train") & (manifest["label"] == "young")]
    stack = np.stack([np.asarray(Image.open(tmp_path / SPLIT_DIR / p).convert("RGB"))
                      for p in rows["split_path"]])
    expected = np.rint(stack.mean(axis=0)).astype(np.uint8)
    assert np.array_equal(means["train/young"], expected)
    # synthetic old faces are dark, young ones bright: the means must say so
    assert means["train/old"].mean() < means["train/young"].mean()
    out = tmp_path / OUTPUT_DIR
    saved = np.asarray(Image.open(out / "mean_train_young.png"))
    assert np.array_equal(saved, expected)
    for name in ("average_faces.png", "samples_train_old.png", "samples_train_young.png"):
        assert Image.open(out / name).size[0] > 100
    grid = Image.open(out / "samples_train_old.png")
    assert grid.size == (5 * 34 - 2, 5 * 34 - 2)
