"""Finding faces in a photo (OpenCV's Haar cascade) and cropping them as LAG frames faces.

The network learnt LAG's whole-head crops, so the detector's tighter box is widened first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegap.errors import AgegapError

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# LAG's crops show the whole head, with more chin than forehead (measured: docs/predict.md).
HEAD_MARGIN = 1.35  # the square crop's side, in detector-box sides
HEAD_DROP = 0.08  # of the box's height, the crop's centre below the box's

# Detection on a smaller copy: a 12-megapixel photo takes seconds at full size, and
# the cascade's smallest window (24 px) is still far below a face's size at 800 px.
DETECT_MAX_SIDE = 800
# Window growth between scans: as many faces as OpenCV's usual 1.1 in half the time.
SCALE_STEP = 1.15
MIN_FACE_FRACTION = 0.08  # of the shorter side: smaller "faces" are texture, not people


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels of the upright image: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


def _cascade_path() -> Path:
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    return Path(folder) / CASCADE_FILE


_PER_THREAD = threading.local()


def _cascade() -> Any:  # cv2.CascadeClassifier, imported lazily
    """This thread's frontal-face cascade.

    One per thread: a ``CascadeClassifier`` shared by the decoding threads fails
    OpenCV's internal assertions when two of them detect at once.
    """
    cascade = getattr(_PER_THREAD, "cascade", None)
    if cascade is None:
        cascade = _PER_THREAD.cascade = _load_cascade()
    return cascade


def _load_cascade() -> Any:
    import cv2

    path = _cascade_path()
    if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
        raise AgegapError(
            f"face detection needs OpenCV's Haar cascade ({CASCADE_FILE}), which this "
            f"OpenCV {cv2.__version__} does not ship: install opencv-python-headless<5, "
            "or pass --no-detect-faces"
        )
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise AgegapError(f"{path}: OpenCV could not load the face cascade")
    return cascade


def check_detector() -> None:
    """Fail with a one-line error now, before any image is read, if detection can't work."""
    _cascade()


def detect_faces(image: Image.Image) -> list[Box]:
    """Frontal faces in an RGB image, largest first; an empty list when there is none.

    The grayscale copy is histogram-equalised, as OpenCV's own face sample does, so
    dark or washed-out photos still give the cascade its contrast.
    """
    import cv2

    width, height = image.size
    scale = min(1.0, DETECT_MAX_SIDE / max(width, height))
    small = (
        image
        if scale == 1.0
        else image.resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
        )
    )
    gray = cv2.equalizeHist(np.asarray(small.convert("L")))
    min_side = max(24, round(MIN_FACE_FRACTION * min(gray.shape)))
    found = _cascade().detectMultiScale(
        gray, scaleFactor=SCALE_STEP, minNeighbors=5, minSize=(min_side, min_side)
    )
    boxes = [
        _clamp(
            Box(round(x / scale), round(y / scale), round(w / scale), round(h / scale)),
            width,
            height,
        )
        for x, y, w, h in (found if len(found) else [])
    ]
    # Largest first, then reading order: the same photo always lists its faces alike.
    return sorted(boxes, key=lambda b: (-b.area, b.y, b.x))


def _clamp(box: Box, width: int, height: int) -> Box:
    x, y = max(0, box.x), max(0, box.y)
    return Box(x, y, max(1, min(box.width, width - x)), max(1, min(box.height, height - y)))


def head_box(face: Box, width: int, height: int) -> Box:
    """The square LAG-like head crop around ``face``, kept inside a ``width`` x ``height`` image.

    Near an edge the square slides inward rather than shrinking, so the head keeps
    its framing; only when the image itself is too small does the side shrink.
    """
    side = min(round(HEAD_MARGIN * max(face.width, face.height)), width, height)
    centre_x = face.x + face.width / 2
    centre_y = face.y + face.height / 2 + HEAD_DROP * face.height
    left = round(min(max(centre_x - side / 2, 0), width - side))
    top = round(min(max(centre_y - side / 2, 0), height - side))
    return Box(left, top, side, side)


def whole_image(image: Image.Image) -> Box:
    """The box of the whole image, used when no face is found."""
    return Box(0, 0, image.width, image.height)


def crop(image: Image.Image, box: Box, size: tuple[int, int]) -> np.ndarray:
    """``box`` of ``image`` resized to ``size`` (width, height) as a uint8 array.

    Bilinear, like :func:`agegap.images.load_rgb`, so a whole-image crop here equals
    what ``score`` and the stages decode from the same file.
    """
    region = (
        image
        if box == whole_image(image)
        else image.crop((box.x, box.y, box.x + box.width, box.y + box.height))
    )
    if region.size != size:
        region = region.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(region, dtype=np.uint8)
