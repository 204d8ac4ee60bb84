"""Robustness probes and colourfulness: fixed transforms, and scores that show a shortcut."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agegap.colourfulness import GRAYSCALE_BELOW, colourfulness, is_grayscale
from agegap.probes import PAD_GREY, PROBES, apply_probe, robustness
from tests.synthetic import face


@pytest.fixture
def faces() -> tuple[np.ndarray, np.ndarray]:
    """Eight old (dark) and eight young (bright) synthetic faces, tinted so they are colour."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 8 + [1] * 8, np.float32)
    images = np.stack([face("old" if y == 0 else "young", 40, rng) for y in labels])
    tint = np.array([1.15, 1.0, 0.75])  # warm: a colour photo, not a gray one
    return np.clip(images * tint, 0, 255).astype(np.uint8), labels


class FilmJudge:
    """A model that took the shortcut: black-and-white photos are "young", and colour
    ones are judged by brightness (the synthetic faces' real cue)."""

    def predict(self, images: np.ndarray, batch_size: int = 0, verbose: int = 0) -> np.ndarray:
        bright = images.mean(axis=(1, 2, 3)) > 128
        return np.where(is_grayscale(images) | bright, 0.9, 0.1)[:, None]


def test_every_probe_is_deterministic_and_keeps_shape(faces) -> None:
    images, _ = faces
    for name in PROBES:
        first, second = apply_probe(name, images), apply_probe(name, images)
        assert first.shape == images.shape and first.dtype == np.uint8, name
        assert np.array_equal(first, second), f"{name} is not deterministic"
        assert not np.array_equal(first, images), f"{name} changes nothing"


def test_probes_do_what_their_names_say(faces) -> None:
    images, _ = faces
    gray = apply_probe("grayscale", images)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert np.array_equal(apply_probe("mirrored", images), images[:, :, ::-1])
    looser = apply_probe("looser_crop", images)
    assert np.abs(looser[:, 0, 0].astype(int) - PAD_GREY).max() <= 1  # grey border
    darker, brighter = apply_probe("darker", images), apply_probe("brighter", images)
    assert darker.mean() < images.mean() < brighter.mean()
    assert apply_probe("low_contrast", images).std() < images.std()
    assert apply_probe("blur", images).std() < images.std()
    tighter = apply_probe("tighter_crop", images)
    expected = np.asarray(
        Image.fromarray(images[0]).crop((4, 4, 36, 36)).resize((40, 40), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(tighter[0], expected)


def test_colourfulness_tells_black_and_white_from_colour(faces) -> None:
    images, _ = faces
    gray = apply_probe("grayscale", images)
    assert np.all(colourfulness(gray) == 0)
    assert np.all(colourfulness(images) > GRAYSCALE_BELOW)
    assert is_grayscale(gray).all() and not is_grayscale(images).any()
    assert not is_grayscale(apply_probe("sepia", images)).any()  # toned, so not gray


def test_robustness_exposes_a_model_that_judges_the_film(faces) -> None:
    images, labels = faces
    probed, probabilities = robustness(FilmJudge(), images, labels)
    assert probed.clean.accuracy == 1.0
    assert probed.worst_probe == "grayscale"
    grayscale = probed.probes["grayscale"]
    assert (grayscale.accuracy, grayscale.old_called_young, grayscale.young_called_old) == (
        0.5, 8, 0,
    )
    assert probed.gap == pytest.approx(0.5)
    assert set(probabilities) == {"clean", *PROBES}
    metrics = probed.metrics()
    assert list(metrics["probes"]) == list(PROBES)
    assert metrics["robustness"] == {
        "worst_probe": "grayscale", "worst_probe_accuracy": 0.5, "gap": 0.5,
    }
    # every test face is in colour: the grayscale groups are empty, and say so with null
    assert metrics["by_colour"]["grayscale"] == {
        "old": {"accuracy": None, "n": 0}, "young": {"accuracy": None, "n": 0},
    }
    assert metrics["by_colour"]["colour"]["old"] == {"accuracy": 1.0, "n": 8}


def test_accuracy_by_colour_counts_the_black_and_white_photos(faces) -> None:
    images, labels = faces
    mixed = images.copy()
    mixed[:3] = apply_probe("grayscale", images[:3])  # three old faces on old film
    probed, _ = robustness(FilmJudge(), mixed, labels)
    assert probed.by_colour["grayscale"]["old"] == {"accuracy": 0.0, "n": 3}
    assert probed.by_colour["colour"]["old"] == {"accuracy": 1.0, "n": 5}
    assert probed.by_colour["colour"]["young"] == {"accuracy": 1.0, "n": 8}
