"""Faults a user can meet: each ends in one clear line or a clean recovery, nothing half-written.

A full disk while a stage writes, an archive member whose name is too long to be a
file, a damaged model, two identities whose split names collide, a one-class test
split, two photos of one name annotated at once, a benchmark's default report.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegap.errors import AgegapError
from agegap.lag import read_manifest
from agegap.layout import RAW_DIR, SPLIT_DIR
from agegap.params import Params
from stages.download import download
from stages.split import split
from tests.synthetic import build_tree, face, make_archive, png_bytes

SIZE = 32
QUOTAS = {"train_per_class": 20, "validation_per_class": 10, "test_per_class": 10}
NO_SPACE = os.strerror(errno.ENOSPC)


def no_space() -> OSError:
    """What a write to a full disk raises: no file name, as from ``write(2)``."""
    return OSError(errno.ENOSPC, NO_SPACE)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (or the file itself) by relative path, with its bytes."""
    if folder.is_file():
        return {folder.name: folder.read_bytes()}
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    """Leftovers of a staging area: the atomic writers' temp names all start with a dot."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def run_stage(main, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """A stage's ``main()`` in-process: its exit status and what it printed on stderr."""
    try:
        main()
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    return status, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def base_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/raw``, ``data/split`` and a tiny ``models/model.keras``, as the stages leave them."""
    import keras

    root = tmp_path_factory.mktemp("faults")
    archive = make_archive(root / "archives" / "lag.zip")
    download(Params(data_url=str(archive.path)), root)
    split(Params(**QUOTAS), root)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    (root / "models").mkdir()
    model.save(root / "models" / "model.keras")
    return root


@pytest.fixture
def project(tmp_path: Path, base_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of :func:`base_project`, the working folder of stages run in-process."""
    root = tmp_path / "project"
    shutil.copytree(base_project, root)
    monkeypatch.chdir(root)
    for stage in ("split", "evaluate"):
        monkeypatch.setattr(f"stages.{stage}.load_params",
                            lambda: Params(image_size=SIZE, split_seed=7, **QUOTAS))
    return root


# --- a full disk -----------------------------------------------------------------------


def test_full_disk_in_split_keeps_the_previous_split(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Links impossible (another file system), so images are copied; the fifth copy
    fills the disk halfway: one line naming that file, the old split whole."""
    from stages import split as split_stage

    before = snapshot(project / SPLIT_DIR)
    copies = []

    def refuse_link(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copy_until_full(source: Path, target: Path) -> None:
        copies.append(target)
        if len(copies) == 5:
            Path(target).write_bytes(Path(source).read_bytes()[:10])
            raise no_space()
        shutil.copyfile(source, target)

    monkeypatch.setattr(os, "link", refuse_link)
    monkeypatch.setattr(shutil, "copy2", copy_until_full)
    status, err = run_stage(split_stage.main, capsys)
    line = one_error_line(err)
    assert status == 1
    written = copies[4].relative_to(next(p for p in copies[4].parents
                                         if p.name.startswith(".split.")))
    assert line.startswith(f"error: {SPLIT_DIR / written}: no space left on device"), line
    assert snapshot(project / SPLIT_DIR) == before
    assert hidden(project / "data") == []


@pytest.mark.slow
@pytest.mark.parametrize("full_at", ["misclassified.png", "metrics.json"])
def test_full_disk_in_evaluate_keeps_metrics_and_plots(
    project: Path, full_at: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Whether a picture or metrics.json fills the disk, the last complete metrics and
    plots stay together, and the line names the file that was being written."""
    import matplotlib.figure

    from stages import evaluate as evaluate_stage

    assert run_stage(evaluate_stage.main, capsys)[0] == 0
    before = {**snapshot(project / "metrics.json"), **snapshot(project / "plots")}
    manifest_path = project / SPLIT_DIR / "manifest.csv"  # one test image fewer: new plots
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    manifest.drop(index=manifest.index[manifest["split"] == "test"][0]).to_csv(
        manifest_path, index=False, lineterminator="\n"
    )
    if full_at == "metrics.json":
        write_text = Path.write_text

        def fill(self: Path, *args: object, **kwargs: object) -> int:
            if self.name.startswith(".metrics."):
                write_text(self, '{"accuracy": 0.')
                raise no_space()
            return write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", fill)
        expected = "metrics.json"
    else:
        def fill(self: object, target: Path, *args: object, **kwargs: object) -> None:
            Path(target).write_bytes(b"\x89PNG half")
            raise no_space()

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fill)
        expected = "plots/evaluate/misclassified.png"
    status, err = run_stage(evaluate_stage.main, capsys)
    assert status == 1
    assert one_error_line(err).startswith(f"error: {expected}: no space left on device"), err
    assert {**snapshot(project / "metrics.json"), **snapshot(project / "plots")} == before
    assert hidden(project) == [] and hidden(project / "plots") == []


def test_agegap_error_is_what_a_full_disk_becomes(tmp_path: Path) -> None:
    """The writers' conversion itself: only ENOSPC / EDQUOT, and the temp file is gone."""
    from agegap.atomic import atomic_path

    with (
        pytest.raises(AgegapError, match=r"metrics\.json: no space left on device"),
        atomic_path(tmp_path / "metrics.json") as staging,
    ):
        staging.write_text("{")
        raise no_space()
    with pytest.raises(PermissionError), atomic_path(tmp_path / "metrics.json"):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


# --- a damaged model -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_model_is_one_line_in_evaluate(
    project: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from stages import evaluate as evaluate_stage

    model = project / "models" / "model.keras"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    else:  # a whole zip, but its weights are garbage
        with zipfile.ZipFile(model) as bundle:
            members = {name: bundle.read(name) for name in bundle.namelist()}
        with zipfile.ZipFile(model, "w") as bundle:
            for name, data in members.items():
                bundle.writestr(name, b"\x00garbage" if name.endswith(".h5") else data)
    status, err = run_stage(evaluate_stage.main, capsys)
    assert status == 1
    assert one_error_line(err).startswith(
        "error: models/model.keras: not a loadable Keras model"
    ), err
    assert not (project / "metrics.json").exists()


# --- a one-class test split ------------------------------------------------------------


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in metrics.json: not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_one_class_test_split_writes_null_never_nan(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegap.atomic import finite
    from agegap.scoring import score_predictions
    from stages import evaluate as evaluate_stage

    scores = score_predictions(np.zeros(4), np.array([0.1, 0.7, 0.2, 0.4]))
    assert np.isnan(scores.roc_auc) and finite(scores.as_dict())["roc_auc"] is None
    manifest_path = project / SPLIT_DIR / "manifest.csv"
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    manifest = manifest[(manifest["split"] != "test") | (manifest["label"] == "old")]
    manifest.to_csv(manifest_path, index=False, lineterminator="\n")
    assert run_stage(evaluate_stage.main, capsys)[0] == 0
    metrics = strict_json((project / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["roc_auc"] is None
    assert metrics["n_test"] == ((manifest["split"] == "test").sum())
    assert all(0 <= value <= 1 for value in metrics["probes"].values())
    for film in metrics["by_colour"].values():
        assert film["young"] == {"accuracy": None, "n": 0}
    assert (project / "plots/evaluate/roc.csv").read_text() == "fpr,tpr\n"


# --- identities whose split names collide ----------------------------------------------


def test_identities_whose_split_names_collide_keep_both_images(tmp_path: Path) -> None:
    """``a__b/c.png`` and ``a/b__c.png`` would both be ``a__b__c.png``: both stay, under
    distinct names, and no other image is renamed."""
    tree = tmp_path / "tree"
    build_tree(tree, identities=10, quirks=False)
    rng = np.random.default_rng(5)
    for path in ("a__b/c.png", "a/b__c.png", "a__b/y/d.png", "a/y/e.png"):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(png_bytes(face("young" if "/y/" in path else "old", SIZE, rng)))
    archive = tmp_path / "lag.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(tree.rglob("*.png")):
            bundle.write(file, file.relative_to(tree).as_posix())
    download(Params(data_url=str(archive)), tmp_path)
    quotas = {"train_per_class": 1, "validation_per_class": 1, "test_per_class": 100}
    for seed in range(10):  # the first seed that deals the two into one split
        split(Params(split_strategy="image", split_seed=seed, **quotas), tmp_path)
        manifest = pd.read_csv(tmp_path / SPLIT_DIR / "manifest.csv", dtype=str,
                               keep_default_na=False).set_index("path")
        pair = manifest.loc[["images/a__b/c.png", "images/a/b__c.png"]]
        if pair["split"].nunique() == 1 and pair["split"].iloc[0] != "unused":
            break
    else:
        pytest.fail("no seed put the two colliding images in one split")
    names = pair["split_path"].tolist()
    assert len(set(names)) == 2
    for raw, name in zip(pair.index, names, strict=True):
        assert name.startswith(f"{pair['split'].iloc[0]}/old/")
        assert Path(name).name.startswith("a__b__c~") and name.endswith(".png")
        copy = tmp_path / SPLIT_DIR / name
        assert copy.read_bytes() == (tmp_path / RAW_DIR / raw).read_bytes()
    others = manifest.drop(pair.index)
    others = others[others["split"] != "unused"]
    assert all(
        Path(name).name == f"{row_identity}__{Path(raw).name}"
        for raw, name, row_identity in zip(others.index, others["split_path"],
                                           others["identity"], strict=True)
    )


def test_a_split_name_too_long_for_the_file_system_is_shortened(tmp_path: Path) -> None:
    from stages.split import NAME_MAX, _split_paths

    identity, file = "i" * 200, "f" * 100 + ".png"  # each fits, joined they do not
    assigned = pd.DataFrame({
        "split": ["train", "unused"], "label": ["old", "old"], "identity": [identity, "p"],
        "path": [f"images/{identity}/{file}", "images/p/x.png"],
    })
    long_name, unused = _split_paths(assigned)
    assert unused == "" and long_name.startswith("train/old/iii") and long_name.endswith(".png")
    assert len(Path(long_name).name.encode()) == NAME_MAX


# --- an archive member whose name is too long ------------------------------------------


def archive_with_long_names(tmp_path: Path, fmt: str) -> tuple[Path, list[str], dict]:
    """The synthetic archive plus a file and an identity whose names are over 255 bytes."""
    base = make_archive(tmp_path / "base.zip")
    long_file = "person_005/" + "é" * 130 + ".png"  # 264 bytes in UTF-8
    long_identity = "x" * 256
    extra = {
        long_file: png_bytes(face("old", SIZE, np.random.default_rng(1))),
        f"{long_identity}/a.png": png_bytes(face("old", SIZE, np.random.default_rng(2))),
        f"{long_identity}/y/b.png": png_bytes(face("young", SIZE, np.random.default_rng(3))),
    }
    with zipfile.ZipFile(base.path) as bundle:
        members = {name: bundle.read(name) for name in bundle.namelist()}
    members.update(extra)
    target = tmp_path / f"long.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(target, "w") as bundle:
            for name, data in members.items():
                bundle.writestr(name, data)
    else:
        with tarfile.open(target, "w:gz") as bundle:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                bundle.addfile(info, io.BytesIO(data))
    return target, sorted(extra), base.decoded


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_too_long_member_names_are_excluded_in_the_manifest(tmp_path: Path, fmt: str) -> None:
    """Recorded like an undecodable file, not a traceback: the thousands of other images
    are the dataset, and the rule (255 bytes) gives the same manifest on every machine."""
    archive, long_names, decoded = archive_with_long_names(tmp_path, fmt)
    report = download(Params(data_url=str(archive)), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out" / RAW_DIR / "manifest.csv")
    rows = manifest.set_index("path").loc[[f"images/{name}" for name in long_names]]
    assert (rows["status"] == "excluded").all()
    assert rows["reason"].str.startswith("name too long to extract").all()
    assert rows["label"].tolist() == ["old", "old", "young"]
    assert all(len(digest) == 64 for digest in rows["sha256"])
    excluded = {item["path"] for item in report["excluded_files"]}
    assert {f"images/{name}" for name in long_names} <= excluded
    assert report["decoded"] == decoded  # every other image as before


def test_a_name_of_255_bytes_is_extracted_as_usual(tmp_path: Path) -> None:
    name = "person_000/" + "n" * 251 + ".png"
    base = make_archive(tmp_path / "base.zip", identities=4, quirks=False)
    with zipfile.ZipFile(base.path, "a") as bundle:
        bundle.writestr(name, png_bytes(face("old", SIZE, np.random.default_rng(0))))
    download(Params(data_url=str(base.path)), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out" / RAW_DIR / "manifest.csv")
    row = manifest.set_index("path").loc[f"images/{name}"]
    assert row["status"] == "ok", row["reason"]


# --- predict --annotate: two files of one name -----------------------------------------


@pytest.mark.slow
def test_annotating_two_files_of_one_name_makes_two_copies(
    tmp_path: Path, base_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegap.cli import main

    rng = np.random.default_rng(0)
    photos = {}
    for name in ("a/x.jpg", "b/x.jpg", "c/y.jpg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True)
        Image.fromarray(face("old", 64, rng)).save(path, quality=95)
        photos[name] = path
    out = tmp_path / "out"
    args = ["predict", *map(str, photos.values()), "--annotate", str(out), "--no-detect-faces",
            "--model", str(base_project / "models" / "model.keras"), "--format", "json"]
    assert main(args) == 0, capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a/x.jpg", "b/x.jpg", "y.jpg"]  # the parent only where names collide
    assert (out / "a/x.jpg").read_bytes() != (out / "b/x.jpg").read_bytes()


def test_annotation_targets_grow_until_they_differ(tmp_path: Path) -> None:
    from agegap.annotate import target_paths
    from agegap.predict import Source

    files = [tmp_path / "p/a/x.jpg", tmp_path / "q/a/x.jpg", tmp_path / "r/X.JPG",
             tmp_path / "z.png"]
    sources = [Source(path, Path(path.name)) for path in files]
    out = tmp_path / "out"
    targets = target_paths(out, sources)
    assert [targets[path].relative_to(out).as_posix() for path in files] == [
        "p/a/x.jpg", "q/a/x.jpg", "r/X.JPG", "z.png"
    ]
