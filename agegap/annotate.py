"""Annotated copies for ``agegap predict --annotate``: each face boxed and labelled.

Copies are written upright (EXIF rotation applied): the boxes are in upright-image pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from agegap import CLASS_NAMES
from agegap.predict import FACE_DETECTED, FACE_NONE, Prediction, Source

COLOURS = dict(zip(CLASS_NAMES, ((230, 120, 20), (30, 170, 60)), strict=True))  # orange, green
# Formats Pillow writes from RGB; anything else is written as PNG.
WRITABLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def annotated(image: Image.Image, rows: Sequence[Prediction]) -> Image.Image:
    """A copy of ``image`` with a box and ``label probability`` per face row.

    A row for the whole image (no face) gets its label in the top-left corner and
    no box, so a copy shows at a glance that no face was found.
    """
    copy = image.copy()
    draw = ImageDraw.Draw(copy)
    side = min(copy.size)
    line = max(2, side // 100)
    font = _font(max(10, side // 25))
    for row in rows:
        if row.failed or row.box is None:
            continue
        colour = COLOURS.get(row.label, (255, 255, 255))
        text = f"{row.label} {row.probability:.2f}"
        if row.face == FACE_DETECTED:
            x, y, w, h = row.box.as_tuple()
            draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=line)
            anchor = (x, max(0, y - getattr(font, "size", 11) - 2 * line))
        else:
            text += " (no face found: whole image)" if row.face == FACE_NONE else ""
            anchor = (line, line)
        left, top, right, bottom = draw.textbbox(anchor, text, font=font)
        draw.rectangle((left - line, top - line, right + line, bottom + line), fill=colour)
        draw.text(anchor, text, fill=(255, 255, 255), font=font)
    return copy


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (Pillow >= 10.1), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an older Pillow, or one built without FreeType
        return ImageFont.load_default()


def target_path(out_dir: Path, source: Source, relative: Path | None = None) -> Path:
    """Where the copy goes: ``out_dir`` mirrors the input's layout; never onto the source."""
    target = out_dir / (relative or source.relative)
    if target.suffix.lower() not in WRITABLE_SUFFIXES:
        target = target.with_name(target.name + ".png")
    if target.resolve() == source.path.resolve():
        target = target.with_name(f"{target.stem}.annotated{target.suffix}")
    return target


def target_paths(out_dir: Path, sources: Sequence[Source]) -> dict[Path, Path]:
    """Each source's :func:`target_path`, distinct: ``a/x.jpg b/x.jpg`` make two copies.

    Only files whose copies would land on one name (compared case-blind, as macOS
    does) keep their parent folders, one more at a time until they differ:
    ``out/a/x.jpg`` and ``out/b/x.jpg``; every other copy keeps its short name.
    """
    depth = [0] * len(sources)
    while True:
        targets = [
            target_path(out_dir, source, _with_parents(source, extra))
            for source, extra in zip(sources, depth, strict=True)
        ]
        clashing = _clashing(targets)
        grown = False
        for index in clashing:
            if depth[index] < len(_parents(sources[index])):
                depth[index] += 1
                grown = True
        if not grown:
            break
    for index in clashing:  # the same path even in full: only a name like x.heic.png
        target = targets[index]
        targets[index] = target.with_name(f"{target.stem}.{index + 1}{target.suffix}")
    return {source.path: target for source, target in zip(sources, targets, strict=True)}


def _parents(source: Source) -> tuple[str, ...]:
    """The folders above ``source.relative`` in the file's absolute path, nearest last."""
    parts = Path(os.path.abspath(source.path)).parts[1:]  # no root: the copy stays in out_dir
    return parts[: max(0, len(parts) - len(source.relative.parts))]


def _with_parents(source: Source, extra: int) -> Path:
    parents = _parents(source)
    return Path(*parents[len(parents) - extra:], source.relative) if extra else source.relative


def _clashing(targets: Sequence[Path]) -> list[int]:
    groups: dict[str, list[int]] = {}
    for index, target in enumerate(targets):
        groups.setdefault(str(target).casefold(), []).append(index)
    return [index for group in groups.values() if len(group) > 1 for index in group]


def write_annotated(image: Image.Image, rows: Sequence[Prediction], target: Path) -> Path:
    """Draw and save the annotated copy at ``target`` (from :func:`target_paths`).

    Returns ``target``; raises ``OSError`` on failure.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    picture = annotated(image, rows)
    if target.suffix.lower() in {".jpg", ".jpeg"}:
        picture.save(target, quality=92)
    else:
        picture.save(target)
    return target
