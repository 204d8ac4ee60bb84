"""``split`` stage: ``data/raw`` dealt into ``data/split/{train,validation,test}/{old,young}``.

The blog's folder layout, browsable by eye; ``manifest.csv`` records each image's split.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from agegap import CLASS_NAMES
from agegap.atomic import atomic_dir, json_text, naming
from agegap.colourfulness import GRAYSCALE_BELOW, colourfulness
from agegap.errors import AgegapError, exits_cleanly
from agegap.images import DECODE_THREADS, load_rgb
from agegap.lag import read_manifest
from agegap.layout import RAW_DIR, RAW_MANIFEST, SPLIT_DIR, SPLIT_MANIFEST
from agegap.params import Params, load_params
from agegap.splitting import SPLITS, UNUSED, Quotas, assign_splits, split_report

NAME_MAX = 255  # bytes in one file name on Linux file systems
SPLIT_MANIFEST_COLUMNS = [
    "split", "label", "identity", "split_path", "path", "sha256", "colourfulness", "grayscale",
]


def split(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """Split the decoded images of ``root/data/raw`` and write ``root/data/split``."""
    raw_manifest = root / RAW_MANIFEST
    if not raw_manifest.is_file():
        raise AgegapError(f"{raw_manifest}: missing; run the download stage first")
    manifest = read_manifest(raw_manifest)
    quotas = Quotas(params.train_per_class, params.validation_per_class, params.test_per_class)
    assigned = assign_splits(
        manifest, params.split_strategy, quotas, params.split_seed,
        folds=params.cv_folds, fold=params.cv_fold,
    )
    assigned["split_path"] = _split_paths(assigned)
    assigned["colourfulness"] = _colourfulness(root / RAW_DIR, assigned["path"])
    assigned["grayscale"] = assigned["colourfulness"] < GRAYSCALE_BELOW
    report = split_report(assigned, quotas, params.split_strategy, params.split_seed)
    report["cv"] = {"folds": params.cv_folds, "fold": params.cv_fold} if params.cv_folds else None
    report["grayscale_below"] = GRAYSCALE_BELOW
    report["grayscale_images"] = {
        name: {
            label: int(((assigned["split"] == name) & (assigned["label"] == label)
                        & assigned["grayscale"]).sum())
            for label in CLASS_NAMES
        }
        for name in SPLITS
    }
    with atomic_dir(root / SPLIT_DIR) as staging:
        for split_name in SPLITS:
            for label in CLASS_NAMES:
                (staging / split_name / label).mkdir(parents=True)
        for row in assigned[assigned["split"] != UNUSED].itertuples():
            _link_or_copy(root / RAW_DIR / row.path, staging / row.split_path)
        ordered = assigned.sort_values(["split", "label", "split_path", "path"], kind="stable")
        with naming(staging / SPLIT_MANIFEST.name):
            ordered[SPLIT_MANIFEST_COLUMNS].to_csv(
                staging / SPLIT_MANIFEST.name, index=False, encoding="utf-8", lineterminator="\n"
            )
        with naming(staging / "report.json"):
            (staging / "report.json").write_text(json_text(report), encoding="utf-8")
    return report


def _split_path(split_name: str, label: str, identity: str, raw_path: str) -> str:
    """``<split>/<label>/<identity>__<file>``: tells whose photo it is."""
    return f"{split_name}/{label}/{identity}__{PurePosixPath(raw_path).name}"


def _split_paths(assigned: pd.DataFrame) -> list[str]:
    """Each used image's :func:`_split_path`, made distinct where two would be one file.

    ``a__b/c.jpg`` and ``a/b__c.jpg`` both become ``a__b__c.jpg`` (or differ only in
    case, one file on macOS), and an identity and a file name may fit the file system
    apart but not joined: only those names get :func:`_distinct`, so every other name,
    and the real archive's split, stays as it was.
    """
    paths = [
        _split_path(row.split, row.label, row.identity, row.path) if row.split != UNUSED else ""
        for row in assigned.itertuples()
    ]
    taken = Counter(path.casefold() for path in paths if path)
    paths = [
        _distinct(path, raw)
        if path and (taken[path.casefold()] > 1 or _too_long(PurePosixPath(path).name))
        else path
        for path, raw in zip(paths, assigned["path"], strict=True)
    ]
    used = [path.casefold() for path in paths if path]
    if len(set(used)) != len(used):  # only a file named like a distinct name can cause it
        clash = next(path for path, n in Counter(used).items() if n > 1)
        raise AgegapError(f"{RAW_MANIFEST}: two images would both be {clash} in {SPLIT_DIR}")
    return paths


def _too_long(name: str) -> bool:
    return len(os.fsencode(name)) > NAME_MAX


def _distinct(split_path: str, raw_path: str) -> str:
    """``<stem>~<8 hex digits of the raw path's hash><suffix>``, cut to fit the file system.

    The tag depends on the image's own raw path only, so it does not change when
    other images come or go.
    """
    folder, name = split_path.rsplit("/", 1)
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 16:  # not a real extension: keep it in the stem
        stem, suffix = name, ""
    tag = f"~{hashlib.sha256(raw_path.encode('utf-8')).hexdigest()[:8]}{suffix}"
    room = NAME_MAX - len(os.fsencode(tag))
    stem = os.fsencode(stem)[:room].decode("utf-8", errors="ignore")
    return f"{folder}/{stem}{tag}"


def _colourfulness(raw: Path, paths: pd.Series) -> list[float]:
    """Each image's colourfulness, rounded so that the manifest reads the same everywhere."""

    def measure(path: str) -> float:
        return round(float(colourfulness(load_rgb(raw / path, None))[0]), 2)

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        return list(pool.map(measure, paths))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        with naming(target):
            shutil.copy2(source, target)


@exits_cleanly
def main() -> None:
    report = split(load_params())
    counts = report["counts"]
    summary = ", ".join(
        f"{name} {counts[name]['old']}+{counts[name]['young']}" for name in SPLITS
    )
    print(
        f"split ({report['strategy']}, seed {report['seed']}): {summary} (old+young); "
        f"{report['identities_shared_between_splits']} identities shared between splits "
        f"-> {SPLIT_DIR}/",
        file=sys.stderr,
    )
    if report["test_short_of_quota"]:
        print(
            f"  note: test has fewer than test_per_class={report['requested_per_class']['test']}"
            " per class: it took what remained",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
