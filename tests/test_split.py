"""The split stage: exact counts, no leaks, determinism, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegap.colourfulness import GRAYSCALE_BELOW, colourfulness
from agegap.errors import AgegapError
from agegap.layout import SPLIT_DIR
from agegap.params import Params
from stages.download import download
from stages.split import split

QUOTAS = {"train_per_class": 20, "validation_per_class": 10, "test_per_class": 10}


@pytest.fixture
def raw_root(tmp_path: Path, synthetic_zip) -> Path:
    download(Params(data_url=str(synthetic_zip.path)), tmp_path)
    return tmp_path


def manifest_of(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / SPLIT_DIR / "manifest.csv", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("strategy", ["identity", "image"])
def test_counts_layout_and_no_leaks(raw_root: Path, strategy: str) -> None:
    report = split(Params(split_strategy=strategy, **QUOTAS), raw_root)
    assert report["counts"]["train"] == {"old": 20, "young": 20}
    assert report["counts"]["validation"] == {"old": 10, "young": 10}
    assert report["duplicate_images_shared_between_splits"] == 0
    manifest = manifest_of(raw_root)
    used = manifest[manifest["split"] != "unused"]
    for row in used.itertuples():
        assert (raw_root / SPLIT_DIR / row.split_path).is_file()
        assert row.split_path.startswith(f"{row.split}/{row.label}/")
    # copies of one image never sit in two splits
    assert (used.groupby("sha256")["split"].nunique() == 1).all()
    on_disk = {p.relative_to(raw_root / SPLIT_DIR).as_posix()
               for p in (raw_root / SPLIT_DIR).glob("*/*/*")}
    assert on_disk == set(used["split_path"])
    if strategy == "identity":
        assert report["identities_shared_between_splits"] == 0
        assert (used.groupby("identity")["split"].nunique() == 1).all()
    saved = json.loads((raw_root / SPLIT_DIR / "report.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))


def test_manifest_records_colourfulness_and_black_and_white(raw_root: Path) -> None:
    """Each image's colourfulness as measured on its pixels, the black-and-white flag from
    the documented threshold, and the report's counts of them."""
    raw = raw_root / "data" / "raw"
    decoded = pd.read_csv(raw / "manifest.csv", dtype=str, keep_default_na=False)
    gray_face = raw / decoded.loc[decoded["status"] == "ok", "path"].iloc[0]
    pixels = np.asarray(Image.open(gray_face).convert("L").convert("RGB"))
    Image.fromarray(pixels).save(gray_face)  # one black-and-white photo among colour noise
    report = split(Params(**QUOTAS), raw_root)
    manifest = manifest_of(raw_root)
    measured = manifest["colourfulness"].astype(float)
    for row, value in zip(manifest.itertuples(), measured, strict=True):
        expected = colourfulness(np.asarray(Image.open(raw / row.path).convert("RGB")))[0]
        assert value == pytest.approx(expected, abs=0.005)
    assert (manifest["grayscale"] == (measured < GRAYSCALE_BELOW).astype(str)).all()
    assert manifest["grayscale"].value_counts()["True"] == 1
    assert manifest.loc[manifest["grayscale"] == "True", "path"].tolist() == [
        gray_face.relative_to(raw).as_posix()
    ]
    gray = manifest[manifest["grayscale"] == "True"]
    counted = sum(n for split_counts in report["grayscale_images"].values()
                  for n in split_counts.values())
    assert counted == int((gray["split"] != "unused").sum())
    assert report["grayscale_below"] == GRAYSCALE_BELOW


def test_test_split_takes_what_remains_and_reports_it(raw_root: Path) -> None:
    report = split(Params(split_strategy="image", **{**QUOTAS, "test_per_class": 100}), raw_root)
    assert report["test_short_of_quota"] is True
    # synthetic: 49 old and 48 young decoded; 30 of each are in train + validation
    assert report["counts"]["test"] == {"old": 19, "young": 18}


def test_same_params_give_a_byte_identical_manifest(raw_root: Path) -> None:
    split(Params(**QUOTAS, split_seed=3), raw_root)
    first = (raw_root / SPLIT_DIR / "manifest.csv").read_bytes()
    split(Params(**QUOTAS, split_seed=3), raw_root)
    assert (raw_root / SPLIT_DIR / "manifest.csv").read_bytes() == first
    split(Params(**QUOTAS, split_seed=4), raw_root)
    assert (raw_root / SPLIT_DIR / "manifest.csv").read_bytes() != first


def test_too_few_images_is_a_clear_error_and_writes_nothing(raw_root: Path) -> None:
    with pytest.raises(AgegapError, match="too few images for train_per_class=500"):
        split(Params(train_per_class=500), raw_root)
    assert not (raw_root / SPLIT_DIR).exists()


def test_missing_raw_data_names_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(AgegapError, match=r"data/raw/manifest\.csv: missing"):
        split(Params(), tmp_path)


@pytest.mark.slow
@pytest.mark.real_data
def test_real_archive_identity_split_shares_no_identity(tmp_path: Path, real_archive: Path) -> None:
    download(Params(data_url=str(real_archive)), tmp_path)
    report = split(Params(split_strategy="identity"), tmp_path)
    assert report["identities_shared_between_splits"] == 0
    assert report["duplicate_images_shared_between_splits"] == 0
    assert report["counts"]["train"] == {"old": 1200, "young": 1200}
    assert report["counts"]["validation"] == {"old": 600, "young": 600}
    image = split(Params(split_strategy="image"), tmp_path)
    assert image["counts"]["test"] == {"old": 108, "young": 108}
    assert image["duplicate_images_shared_between_splits"] == 0


@pytest.mark.parametrize("strategy", ["identity", "image"])
def test_k_fold_tests_every_image_once_and_never_beside_its_person(
    raw_root: Path, strategy: str
) -> None:
    quotas = {"train_per_class": 12, "validation_per_class": 6}
    tested: list[str] = []
    for fold in range(3):
        report = split(Params(split_strategy=strategy, cv_folds=3, cv_fold=fold, **quotas),
                       raw_root)
        assert report["cv"] == {"folds": 3, "fold": fold}
        assert report["counts"]["train"] == {"old": 12, "young": 12}
        manifest = manifest_of(raw_root)
        test = manifest[manifest["split"] == "test"]
        assert 25 <= len(test) <= 40  # 97 images in three folds of whole units
        tested += test["sha256"].tolist()
        used = manifest[manifest["split"] != "unused"]
        assert (used.groupby("sha256")["split"].nunique() == 1).all()
        if strategy == "identity":
            assert (used.groupby("identity")["split"].nunique() == 1).all()
    decoded = manifest_of(raw_root)
    assert sorted(tested) == sorted(decoded["sha256"])  # each image in one test fold


def test_k_fold_with_too_large_quotas_names_the_folds(raw_root: Path) -> None:
    with pytest.raises(AgegapError, match="cv_folds=3"):
        split(Params(cv_folds=3, train_per_class=40, validation_per_class=10), raw_root)
