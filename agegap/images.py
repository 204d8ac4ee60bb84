"""Decoding images with Pillow into the uint8 arrays every stage works on.

LAG is small, so stages decode it once into memory rather than stream it every epoch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A decompression bomb (a tiny file that claims a giant canvas) must be refused, not decoded.
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Pillow errs above twice the limit and only warns below; _open_within_limit refuses both,
# so its warning would be a second line saying less than the refusal does.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Threads that decode (and search for faces) at once: Pillow and OpenCV release the GIL.
DECODE_THREADS = min(8, (os.cpu_count() or 1) * 2)


class UndecodableImageError(ValueError):
    """The file is not an image Pillow can fully decode; the message says why."""


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Map every way Pillow fails on a bad file to one :class:`UndecodableImageError`.

    Shared by :func:`inspect_image` (the stages) and :func:`decode_rgb` (``agegap
    predict``), so a truncated or oversized file gets the same one-line reason in both.
    """
    if path.stat().st_size == 0:
        raise UndecodableImageError("empty file (0 bytes)")
    try:
        yield
    except UnidentifiedImageError:
        raise UndecodableImageError("not an image Pillow recognises") from None
    except Image.DecompressionBombError:
        raise UndecodableImageError(
            f"image too large (over {MAX_PIXELS:,} pixels; possible decompression bomb)"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UndecodableImageError(f"cannot decode: {message}") from None


def _open_within_limit(source: Path | BinaryIO) -> Image.Image:
    """``Image.open``, refusing a canvas over :data:`MAX_PIXELS` from its header alone.

    Not by turning Pillow's warning into an error: a warnings filter is process-wide, and
    code in another thread (Keras predicting beside the decoding threads) that leaves its
    own ``catch_warnings`` scope puts back the filters it found, dropping ours.
    """
    image = Image.open(source)
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise Image.DecompressionBombError(f"{image.width * image.height} pixels")
    return image


def inspect_image(path: Path) -> tuple[int, int, str]:
    """Width, height and mode of a fully decoded image; raises :class:`UndecodableImageError`.

    ``Image.open`` reads only the header, so a truncated PNG passes it; ``load()``
    decodes every pixel and is what catches truncation.
    """
    with _decoding(path), _open_within_limit(path) as image:
        image.load()
        return image.width, image.height, image.mode


def decode_rgb(path: Path, *, exif_transpose: bool = True) -> Image.Image:
    """Fully decode ``path`` (the first frame of a GIF or TIFF) into an upright RGB image.

    For photos from a camera or phone, which store the pixels sideways and the
    rotation in EXIF: face detection needs the face upright. Raises
    :class:`UndecodableImageError` with the same reasons as :func:`inspect_image`,
    after decoding only once.
    """
    try:
        handle = path.open("rb")
    except OSError as error:  # unreadable, a folder, gone since it was listed
        raise UndecodableImageError(f"cannot read: {error.strerror or error}") from None
    with handle, _decoding(path), _open_within_limit(handle) as image:
        image.load()
        upright = ImageOps.exif_transpose(image) if exif_transpose else image
        return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any mode: palette, grayscale, alpha (on white), CMYK and 16-bit."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 255 else 255.0
        gray = np.clip(array * (255.0 / top if top > 255 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path, size: int | None, *, exif_transpose: bool = False) -> np.ndarray:
    """Decode ``path`` into a ``(size, size, 3)`` uint8 array, resizing when needed
    (``size=None``: as stored)."""
    with Image.open(path) as image:
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def load_many(paths: Sequence[Path], size: int) -> np.ndarray:
    """Decode many images into one ``(n, size, size, 3)`` uint8 array, in order.

    Threads help because Pillow releases the GIL while it inflates PNG data.
    """
    batch = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    if not paths:
        return batch

    def fill(index: int) -> None:
        batch[index] = load_rgb(paths[index], size)

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        list(pool.map(fill, range(len(paths))))
    return batch
