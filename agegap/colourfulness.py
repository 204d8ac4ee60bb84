"""How colourful an image is, to tell black-and-white photographs from colour ones: scores
on each subset show whether a model judges the face or the film.
"""

from __future__ import annotations

import numpy as np

# Hasler and Süsstrunk's scale: 0 is gray, 15 "slightly colourful", 33 "moderately".
# Below 6 an image is near-grayscale: a black-and-white print, scanned or faintly toned.
GRAYSCALE_BELOW = 6.0


def colourfulness(images: np.ndarray) -> np.ndarray:
    """Hasler and Süsstrunk's colourfulness M of each ``(n, h, w, 3)`` uint8 image, ``(n,)``.

    M = sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2), with rg = R - G and
    yb = (R + G) / 2 - B ("Measuring colourfulness in natural images", 2003).
    """
    pixels = np.asarray(images, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels[None]
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = np.hypot(rg.std(axis=(1, 2)), yb.std(axis=(1, 2)))
    tint = np.hypot(rg.mean(axis=(1, 2)), yb.mean(axis=(1, 2)))
    return spread + 0.3 * tint


def is_grayscale(images: np.ndarray) -> np.ndarray:
    """True for each image whose colourfulness is below :data:`GRAYSCALE_BELOW`."""
    return colourfulness(images) < GRAYSCALE_BELOW
