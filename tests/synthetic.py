"""Small synthetic archives in the LAG layout, with every quirk of the real one planted.

The real archive may not be redistributed, so tests build their own: identity
folders of "old" photos with a ``y/`` subfolder of "young" ones, a Cyrillic and a
space-containing name, an exact duplicate, a truncated PNG, a zero-byte PNG and a
file that is not an image. Old faces are drawn dark and young ones bright, so a
small network learns them in a few epochs.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from agegap.dataset import ImageSet

NON_ASCII_IDENTITY = "иван_петров"
SPACED_FILE = "photo with spaces_1.png"


@dataclass
class SyntheticArchive:
    """Where the archive is and what was planted in it, for the tests' assertions."""

    path: Path
    identities: int
    decoded: dict[str, int]
    excluded: list[str] = field(default_factory=list)
    duplicates: int = 0


def face(label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A 'face': dark with horizontal bands for old, bright with a disc for young."""
    yy, xx = np.mgrid[0:size, 0:size]
    noise = rng.normal(0, 12, (size, size, 3))
    if label == "old":
        base = 70 + 25 * np.sin(yy / 2.0)[..., None] + rng.uniform(-10, 10)
    else:
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2)[..., None]
        base = 170 + 50 * disc + rng.uniform(-10, 10)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def build_tree(
    folder: Path,
    *,
    identities: int = 24,
    per_class: int = 2,
    size: int = 32,
    seed: int = 0,
    quirks: bool = True,
) -> SyntheticArchive:
    """Write the LAG layout into ``folder``; return what was planted (path = folder)."""
    rng = np.random.default_rng(seed)
    names = [f"person_{i:03d}" for i in range(identities)]
    if quirks and identities >= 2:
        names[0] = NON_ASCII_IDENTITY
    decoded = {"old": 0, "young": 0}
    for index, name in enumerate(names):
        for label, sub in (("old", ""), ("young", "y")):
            target = folder / name / sub if sub else folder / name
            target.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                filename = SPACED_FILE if quirks and index == 1 and k == 0 else f"{name}_{k}.png"
                (target / filename).write_bytes(png_bytes(face(label, size, rng)))
                decoded[label] += 1
    (folder / "README.txt").write_text("synthetic LAG-like archive\n", encoding="utf-8")
    planted = SyntheticArchive(folder, identities, decoded)
    if quirks:
        first = folder / names[2]
        original = sorted(first.glob("*.png"))[0]
        shutil.copyfile(original, first / "copy_of_first.png")
        decoded["old"] += 1
        planted.duplicates = 1
        good = png_bytes(face("old", size, rng))
        (folder / names[3] / "truncated.png").write_bytes(good[: len(good) // 2])
        (folder / names[3] / "y" / "empty.png").write_bytes(b"")
        (folder / names[4] / "notes.txt").write_text("not an image", encoding="utf-8")
        planted.excluded = [
            f"{names[3]}/truncated.png",
            f"{names[3]}/y/empty.png",
            f"{names[4]}/notes.txt",
        ]
    return planted


class _Utf8NameWithoutFlag(zipfile.ZipInfo):
    """Stores the name as UTF-8 bytes without the UTF-8 flag, as the official LAG zip does."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:
        return self.filename.encode("utf-8"), self.flag_bits & ~0x800


def make_archive(
    target: Path,
    *,
    fmt: str = "zip",
    top_folder: str | None = None,
    **tree_options: object,
) -> SyntheticArchive:
    """A zip (UTF-8 names, no UTF-8 flag, like the official one) or tar.gz archive."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / (top_folder or "")
        root.mkdir(parents=True, exist_ok=True)
        planted = build_tree(root, **tree_options)  # type: ignore[arg-type]
        files = sorted(p for p in Path(scratch).rglob("*") if p.is_file())
        target.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "zip":
            with zipfile.ZipFile(target, "w") as bundle:
                for file in files:
                    name = file.relative_to(scratch).as_posix()
                    bundle.writestr(_Utf8NameWithoutFlag(name), file.read_bytes())
        else:
            with tarfile.open(target, "w:gz") as bundle:
                for file in files:
                    bundle.add(file, arcname=file.relative_to(scratch).as_posix())
    planted.path = target
    return planted


def tiny_image_set(count: int, size: int, *, seed: int = 0, noise: float = 80.0) -> ImageSet:
    """``count`` images, old and young alternating, young ones 150 levels brighter: a task
    a one-layer network learns in a few epochs, for tests that need training to move."""
    from agegap.dataset import ImageSet

    rng = np.random.default_rng(seed)
    labels = np.tile([0.0, 1.0], count // 2).astype(np.float32)
    images = labels[:, None, None, None] * 150 + rng.uniform(0, noise, (count, size, size, 3))
    return ImageSet(images.astype(np.uint8), labels)
