"""Robustness probes: the test faces changed in fixed ways that change no one's age, so a
model that judges the face, not the photograph, scores about the same on each.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from agegap import CLASS_NAMES, DECISION_THRESHOLD
from agegap.colourfulness import is_grayscale
from agegap.scoring import predict_probabilities

PAD_GREY = (128, 128, 128)
SEPIA = {"black": (38, 24, 10), "mid": (166, 126, 86), "white": (255, 242, 214)}


def _grayscale(image: Image.Image) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def _sepia(image: Image.Image) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(image), **SEPIA)


def _looser_crop(image: Image.Image) -> Image.Image:
    """12% of the side padded with grey on each side, resized back: the face looks smaller."""
    border = round(0.12 * image.width)
    return ImageOps.expand(image, border=border, fill=PAD_GREY).resize(
        image.size, Image.Resampling.BILINEAR
    )


def _tighter_crop(image: Image.Image) -> Image.Image:
    """10% of the side cut from each side, resized back: the face looks larger."""
    inset = round(0.10 * image.width)
    box = (inset, inset, image.width - inset, image.height - inset)
    return image.crop(box).resize(image.size, Image.Resampling.BILINEAR)


def _jpeg(image: Image.Image, quality: int = 25) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _enhance(kind: type, factor: float) -> Callable[[Image.Image], Image.Image]:
    return lambda image: kind(image).enhance(factor)


PROBES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "grayscale": _grayscale,
    "sepia": _sepia,
    "looser_crop": _looser_crop,
    "darker": _enhance(ImageEnhance.Brightness, 0.7),
    "tighter_crop": _tighter_crop,
    "jpeg_q25": _jpeg,
    "low_contrast": _enhance(ImageEnhance.Contrast, 0.7),
    "brighter": _enhance(ImageEnhance.Brightness, 1.3),
    "blur": lambda image: image.filter(ImageFilter.GaussianBlur(1)),
    "rotated_10": lambda image: image.rotate(
        10, resample=Image.Resampling.BILINEAR, fillcolor=PAD_GREY
    ),
    "mirrored": ImageOps.mirror,
}
"""Each probe, in the order they are reported: what it does is in its name."""


def apply_probe(name: str, images: np.ndarray) -> np.ndarray:
    """``images`` (``(n, h, w, 3)`` uint8) as changed by the probe ``name``, same shape."""
    transform = PROBES[name]
    changed = np.empty_like(images)
    for index, pixels in enumerate(images):
        changed[index] = np.asarray(transform(Image.fromarray(pixels)), dtype=np.uint8)
    return changed


@dataclass(frozen=True)
class ProbeScore:
    """Accuracy on the changed images, and the mistakes by direction."""

    accuracy: float
    old_called_young: int
    young_called_old: int


def score_labels(labels: np.ndarray, probabilities: np.ndarray) -> ProbeScore:
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= DECISION_THRESHOLD).astype(int)
    return ProbeScore(
        accuracy=float(np.mean(predicted == labels)) if len(labels) else float("nan"),
        old_called_young=int(np.sum((labels == 0) & (predicted == 1))),
        young_called_old=int(np.sum((labels == 1) & (predicted == 0))),
    )


@dataclass(frozen=True)
class Robustness:
    """Clean and per-probe scores, the worst probe, and accuracy by film and class."""

    clean: ProbeScore
    probes: dict[str, ProbeScore]
    by_colour: dict[str, dict[str, dict[str, float | int | None]]]

    @property
    def worst_probe(self) -> str:
        return min(self.probes, key=lambda name: self.probes[name].accuracy)

    @property
    def gap(self) -> float:
        """Clean accuracy minus the worst probe's: 0 for a model no probe can fool."""
        return self.clean.accuracy - self.probes[self.worst_probe].accuracy

    def metrics(self) -> dict:
        """The part written to ``metrics.json``: flat enough for ``dvc metrics diff``."""
        return {
            "probes": {name: score.accuracy for name, score in self.probes.items()},
            "robustness": {
                "worst_probe": self.worst_probe,
                "worst_probe_accuracy": self.probes[self.worst_probe].accuracy,
                "gap": self.gap,
            },
            "by_colour": self.by_colour,
        }


def accuracy_by_colour(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Accuracy of each class on the near-grayscale and on the colour images, with counts.

    An empty group's accuracy is ``None`` (``null`` in JSON), never NaN.
    """
    labels = np.asarray(labels).astype(int)
    right = (np.asarray(probabilities) >= DECISION_THRESHOLD).astype(int) == labels
    gray = is_grayscale(images) if len(images) else np.zeros(0, bool)
    groups = {}
    for film, members in (("colour", ~gray), ("grayscale", gray)):
        groups[film] = {}
        for index, label in enumerate(CLASS_NAMES):
            chosen = members & (labels == index)
            count = int(chosen.sum())
            groups[film][label] = {
                "accuracy": float(right[chosen].mean()) if count else None,
                "n": count,
            }
    return groups


def probe_images(images: np.ndarray) -> dict[str, np.ndarray]:
    """Every probe's version of ``images``, in :data:`PROBES` order."""
    return {name: apply_probe(name, images) for name in PROBES}


def robustness(
    model, images: np.ndarray, labels: np.ndarray, *, tta_flip: bool = False,
    clean_probabilities: np.ndarray | None = None,
) -> tuple[Robustness, dict[str, np.ndarray]]:
    """Score ``model`` on ``images`` and on every probe of them.

    Returns the scores and each probe's P(young) per image (``clean`` included), for
    plots. ``clean_probabilities`` saves predicting the clean images twice.
    """
    if clean_probabilities is None:
        clean_probabilities = predict_probabilities(model, images, tta_flip=tta_flip)
    probabilities = {"clean": clean_probabilities}
    for name, changed in probe_images(images).items():
        probabilities[name] = predict_probabilities(model, changed, tta_flip=tta_flip)
    result = Robustness(
        clean=score_labels(labels, clean_probabilities),
        probes={name: score_labels(labels, probabilities[name]) for name in PROBES},
        by_colour=accuracy_by_colour(images, labels, clean_probabilities),
    )
    return result, probabilities
