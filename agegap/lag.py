"""The LAG layout read into a manifest: one row per file, decoded or excluded with a reason.

``<identity>/<file>`` are a person's adult ("old") photos, ``<identity>/y/<file>`` the child's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from agegap.archive import Unwritten
from agegap.images import DECODE_THREADS, UndecodableImageError, inspect_image

MANIFEST_COLUMNS = [
    "path",
    "identity",
    "label",
    "status",
    "reason",
    "width",
    "height",
    "mode",
    "sha256",
    "duplicate_of",
]
YOUNG_FOLDER = "y"


@dataclass(frozen=True)
class _Row:
    path: str
    identity: str
    label: str
    status: str
    reason: str
    width: int | None
    height: int | None
    mode: str
    sha256: str


def _label(parts: tuple[str, ...]) -> tuple[str, str]:
    """The label a file's place gives it, or ``""`` and why its place is wrong."""
    if len(parts) == 2:
        return "old", ""
    if len(parts) == 3 and parts[1] == YOUNG_FOLDER:
        return "young", ""
    return "", f"unexpected location (not <identity>/ or <identity>/{YOUNG_FOLDER}/)"


def _describe(file: Path, root: Path, prefix: str) -> _Row:
    relative = file.relative_to(root)
    parts = relative.parts
    identity = parts[0]
    label, reason = _label(parts)
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    path = f"{prefix}{relative.as_posix()}"
    if reason:
        return _Row(path, identity, label, "excluded", reason, None, None, "", digest)
    try:
        width, height, mode = inspect_image(file)
    except UndecodableImageError as error:
        return _Row(path, identity, label, "excluded", str(error), None, None, "", digest)
    return _Row(path, identity, label, "ok", "", width, height, mode, digest)


def scan_lag(
    root: Path, *, path_prefix: str = "", unwritten: Iterable[Unwritten] = ()
) -> tuple[pd.DataFrame, list[str]]:
    """Manifest of every file under the identity folders of ``root``, sorted by path.

    Returns the manifest and the files outside any identity folder (such as the
    archive's README.txt), which are not part of the dataset but are reported.
    ``unwritten`` are the archive's files that extraction left out (paths relative to
    ``root``): each is a row, excluded with its reason, as if it were on disk.
    """
    files = sorted(p for p in root.rglob("*") if p.is_file())
    outside = [p.relative_to(root).as_posix() for p in files if len(p.relative_to(root).parts) < 2]
    inside = [p for p in files if len(p.relative_to(root).parts) >= 2]
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        rows = list(pool.map(lambda f: _describe(f, root, path_prefix), inside))
    for member in unwritten:
        if len(member.path.parts) < 2:
            outside.append(member.path.as_posix())
            continue
        label, _ = _label(member.path.parts)
        rows.append(_Row(f"{path_prefix}{member.path.as_posix()}", member.path.parts[0], label,
                         "excluded", member.reason, None, None, "", member.sha256))
    outside.sort()
    manifest = pd.DataFrame([row.__dict__ for row in rows], columns=MANIFEST_COLUMNS[:-1])
    manifest = manifest.sort_values("path", kind="stable").reset_index(drop=True)
    manifest["width"] = manifest["width"].astype("Int64")
    manifest["height"] = manifest["height"].astype("Int64")
    manifest["duplicate_of"] = _duplicate_of(manifest)
    return manifest, outside


def _duplicate_of(manifest: pd.DataFrame) -> pd.Series:
    """For each decoded image with the same bytes as an earlier one (by path), that path."""
    duplicate_of = pd.Series("", index=manifest.index, dtype="object")
    decoded = manifest[manifest["status"] == "ok"]
    first_path_by_digest = decoded.groupby("sha256", sort=False)["path"].transform("first")
    copies = first_path_by_digest != decoded["path"]
    duplicate_of.loc[copies[copies].index] = first_path_by_digest[copies]
    return duplicate_of


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest CSV written by this project, keeping strings as strings."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    for column in ("width", "height"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame
