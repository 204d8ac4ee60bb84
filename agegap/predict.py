"""The trained model on arbitrary photos: which files, which crops, one batched inference.

Shared by ``agegap predict``, ``agegap score --detect-faces`` and ``agegap serve``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from agegap import CLASS_NAMES, DECISION_THRESHOLD
from agegap.errors import AgegapError
from agegap.faces import Box, crop, detect_faces, head_box, whole_image
from agegap.images import DECODE_THREADS, UndecodableImageError, decode_rgb

# What a folder is searched for; a file named on the command line is tried whatever
# its name, so a mislabelled file still gets a clear row.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff"}
)
CHUNK_FILES = 256  # files decoded, then predicted, at a time: bounds memory on big folders

FACE_DETECTED = "detected"
FACE_NONE = "none found"  # detection ran and found nothing: the whole image was used
FACE_NOT_SEARCHED = "not searched"  # --no-detect-faces: the whole image was used


@dataclass(frozen=True)
class Source:
    """A file to predict, and its name relative to the argument it was found under."""

    path: Path
    relative: Path


@dataclass(frozen=True)
class Prediction:
    """One row of output: a face (or the whole image) of a file, or why the file failed."""

    file: str
    face: str = ""
    box: Box | None = None
    label: str = ""
    probability: float | None = None  # of ``label``
    p_young: float | None = None
    error: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error)


@dataclass
class Prepared:
    """A decoded file: its crops for the network, where they came from, or its error."""

    source: Source
    face: str = ""
    boxes: list[Box] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    image: Image.Image | None = None  # kept only when annotated copies are wanted
    error: str = ""


def input_size(model: object) -> tuple[int, int]:
    """(width, height) the model takes, read from its input shape, not from params.yaml.

    A model trained with another ``image_size`` must still get inputs of its own size.
    """
    shape = model.input_shape  # type: ignore[attr-defined]
    if isinstance(shape, list):
        shape = shape[0]
    height, width = shape[1], shape[2]
    if not height or not width:
        raise AgegapError(f"the model's input shape {shape} has no fixed image size")
    return int(width), int(height)


def collect(paths: Sequence[Path]) -> list[Source | Prediction]:
    """The image files named by ``paths`` (folders searched recursively), in argument order.

    A missing path, or a folder without images, becomes a failed :class:`Prediction`
    in its place: the user named it, so silence would hide a typo. Hidden files are
    skipped in folders (macOS leaves ``._photo.jpg`` resource forks that are not images).
    """
    entries: list[Source | Prediction] = []
    seen: set[Path] = set()

    def add(path: Path, relative: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            entries.append(Source(path, relative))

    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.is_file()
            )
            if not found:
                suffixes = " ".join(sorted(IMAGE_SUFFIXES))
                entries.append(Prediction(str(path), error=f"folder has no images ({suffixes})"))
            for file in found:
                add(file, Path(path.resolve().name) / file.relative_to(path))
        elif path.exists():
            add(path, Path(path.name))
        else:
            entries.append(Prediction(str(path), error="no such file or folder"))
    return entries


def prepare(
    source: Source, size: tuple[int, int], *, detect: bool, keep_image: bool = False
) -> Prepared:
    """Decode one file and cut the network's inputs: one per face, or the whole image."""
    try:
        image = decode_rgb(source.path)
    except UndecodableImageError as error:
        return Prepared(source, error=str(error))
    faces = detect_faces(image) if detect else []
    if faces:
        crops = [crop(image, head_box(face, *image.size), size) for face in faces]
        prepared = Prepared(source, FACE_DETECTED, faces, crops)
    else:
        box = whole_image(image)
        face = FACE_NONE if detect else FACE_NOT_SEARCHED
        prepared = Prepared(source, face, [box], [crop(image, box, size)])
    if keep_image:
        prepared.image = image
    return prepared


def model_input(path: Path, size: tuple[int, int], *, detect: bool) -> np.ndarray:
    """One network input for a labelled file (``agegap score``): its largest face or all of it.

    Raises :class:`UndecodableImageError` for a bad file.
    """
    prepared = prepare(Source(path, Path(path.name)), size, detect=detect)
    if prepared.error:
        raise UndecodableImageError(prepared.error)
    return prepared.crops[0]


def prediction_rows(prepared: Prepared, p_young: Sequence[float]) -> list[Prediction]:
    """The rows of a prepared file, given P(young) of each of its crops (none for an error)."""
    if prepared.error:
        return [Prediction(str(prepared.source.path), error=prepared.error)]
    rows = []
    for box, p in zip(prepared.boxes, p_young, strict=True):
        young = p >= DECISION_THRESHOLD
        rows.append(
            Prediction(
                str(prepared.source.path),
                face=prepared.face,
                box=box,
                label=CLASS_NAMES[int(young)],
                probability=float(p if young else 1.0 - p),
                p_young=float(p),
            )
        )
    return rows


def predict(
    model: object,
    sources: Sequence[Source],
    *,
    detect: bool = True,
    keep_images: bool = False,
    chunk_files: int = CHUNK_FILES,
    tta_flip: bool = False,
) -> Iterator[tuple[Prepared, list[Prediction]]]:
    """For each source, in order: the prepared file and its rows (one per face, or the error).

    Chunks of files are decoded in parallel and their crops predicted in one batch.
    """
    from agegap.scoring import predict_probabilities

    size = input_size(model)
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for start in range(0, len(sources), chunk_files):
            chunk = sources[start : start + chunk_files]
            prepared = list(
                pool.map(lambda s: prepare(s, size, detect=detect, keep_image=keep_images), chunk)
            )
            crops = [c for item in prepared for c in item.crops]
            batch = np.stack(crops) if crops else np.zeros((0, size[1], size[0], 3), np.uint8)
            probabilities = predict_probabilities(  # type: ignore[arg-type]
                model, batch, tta_flip=tta_flip
            )
            position = 0
            for item in prepared:
                count = len(item.crops)
                yield item, prediction_rows(item, probabilities[position : position + count])
                position += count


def failed_rows(rows: Iterable[Prediction]) -> int:
    """How many distinct files (or named paths) failed."""
    return len({row.file for row in rows if row.failed})
