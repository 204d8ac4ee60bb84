"""``download`` stage: the LAG archive, fetched or copied, extracted into ``data/raw/``.

``manifest.csv`` says what became of every file of the archive; ``report.json`` counts them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from agegap import CLASS_NAMES
from agegap.archive import Unwritten, extract_archive, find_lag_root
from agegap.atomic import atomic_dir, json_text, naming
from agegap.errors import AgegapError, exits_cleanly
from agegap.fetch import DOWNLOAD_CACHE, obtain_archive
from agegap.lag import scan_lag
from agegap.layout import RAW_DIR, RAW_MANIFEST
from agegap.params import Params, load_params

IMAGES_SUBDIR = "images"


def download(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """Fetch ``params.data_url`` and extract it into ``root/data/raw``; return the report."""
    archive = obtain_archive(params.data_url, params.data_sha256, root, root / DOWNLOAD_CACHE)
    with atomic_dir(root / RAW_DIR) as staging:
        with tempfile.TemporaryDirectory(dir=staging, prefix=".extract-") as scratch:
            unwritten = extract_archive(archive, Path(scratch))
            lag_root = find_lag_root(Path(scratch), archive.name)
            shutil.move(str(lag_root), staging / IMAGES_SUBDIR)
        manifest, outside = scan_lag(
            staging / IMAGES_SUBDIR, path_prefix=f"{IMAGES_SUBDIR}/",
            unwritten=_under(unwritten, lag_root.relative_to(scratch)),
        )
        if not (manifest["status"] == "ok").any():
            raise AgegapError(f"{archive.name}: no image in the archive could be decoded")
        with naming(staging / RAW_MANIFEST.name):
            manifest.to_csv(staging / RAW_MANIFEST.name, index=False, encoding="utf-8")
        report = _report(manifest, outside, params.data_url)
        with naming(staging / "report.json"):
            (staging / "report.json").write_text(json_text(report), encoding="utf-8")
    return report


def _under(unwritten: list[Unwritten], lag_root: Path) -> list[Unwritten]:
    """The left-out files inside the LAG folder, with paths relative to it."""
    return [
        Unwritten(PurePosixPath(*member.path.parts[len(lag_root.parts):]), member.sha256,
                  member.reason)
        for member in unwritten
        if member.path.parts[: len(lag_root.parts)] == lag_root.parts
    ]


def _report(manifest: Any, outside: list[str], url: str) -> dict[str, Any]:
    decoded = manifest[manifest["status"] == "ok"]
    excluded = manifest[manifest["status"] == "excluded"]
    copies = decoded[decoded["duplicate_of"] != ""]
    return {
        "source": url,
        "files": len(manifest),
        "identities": int(decoded["identity"].nunique()),
        "decoded": {label: int((decoded["label"] == label).sum()) for label in CLASS_NAMES},
        "excluded": len(excluded),
        "excluded_files": [
            {"path": row.path, "reason": row.reason} for row in excluded.itertuples()
        ],
        "duplicate_images": len(copies),
        "duplicates": [
            {"path": row.path, "duplicate_of": row.duplicate_of} for row in copies.itertuples()
        ],
        "ignored_files_outside_identity_folders": outside,
    }


@exits_cleanly
def main() -> None:
    report = download(load_params())
    decoded = report["decoded"]
    print(
        f"download: {report['identities']} identities, {decoded['old']} old + "
        f"{decoded['young']} young images decoded, {report['excluded']} excluded, "
        f"{report['duplicate_images']} exact duplicates -> {RAW_DIR}/",
        file=sys.stderr,
    )
    for item in report["excluded_files"]:
        print(f"  excluded {item['path']}: {item['reason']}", file=sys.stderr)


if __name__ == "__main__":
    main()
