"""Training is reproducible on CPU, and the speed settings do not change what is learnt.

``params.deterministic: true`` promises the same metrics on every CPU run; the speed-ups
(bfloat16 where the CPU multiplies it natively, several steps per execution) must keep that promise.
Tiny images and a tiny network keep each run to a few seconds.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from agegap.dataset import ImageSet
from agegap.params import Params
from agegap.runtime import configure
from agegap.training import steps_per_execution, train_model

TINY = {
    "image_size": 24,
    "conv_filters": (4, 8),
    "kernel_size": 3,
    "dense_units": 8,
    "batch_size": 8,
    "epochs": 3,
    "train_images_per_epoch": 48,
    "deterministic": True,
}


def tiny_sets() -> tuple[ImageSet, ImageSet]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array([0.0, 1.0], np.float32), 20)
    # Learnable: "young" images are brighter, so the accuracy moves between epochs.
    images = rng.integers(0, 160, (40, 24, 24, 3)) + (labels * 90)[:, None, None, None]
    images = images.astype(np.uint8)
    train = ImageSet(images[::2], labels[::2])
    validation = ImageSet(images[1::2], labels[1::2])
    return train, validation


def history(
    tmp_path: Path, name: str, precision: str, execution_steps: int | None,
    *, draws_elsewhere: int = 0, levers: dict | None = None,
) -> dict:
    """``draws_elsewhere``: numbers other code takes from the global generators after
    ``configure`` seeded them, as a library's background thread may at any moment."""
    params = Params(**TINY, precision=precision, **(levers or {}))
    configure(params)
    for _ in range(draws_elsewhere):
        random.random()
        np.random.random()
    train, validation = tiny_sets()
    result = train_model(
        params, train, validation, tmp_path / f"{name}.keras", verbose=0,
        execution_steps=execution_steps,
    )
    return result.history


ROBUSTNESS_RECIPE = {
    "batch_norm": True, "augment_scale": 0.3, "augment_grayscale": 0.5,
    "augment_brightness": 0.3, "augment_contrast": 0.3, "augment_saturation": 0.5,
    "augment_blur": 1.0, "augment_jpeg": 0.5,
}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "auto"])
@pytest.mark.parametrize("levers", [{}, ROBUSTNESS_RECIPE], ids=["default", "robustness"])
def test_two_runs_give_identical_histories(
    tmp_path: Path, restore_globals: None, precision: str, levers: dict
) -> None:
    """``auto`` is what ``params.yaml`` ships: mixed_bfloat16 on a CPU with AMX or
    avx512_bf16. The robustness levers add batch normalisation on TensorFlow's fused
    kernel and every photometric change, JPEG's codec included."""
    first = history(tmp_path, "first", precision, None, levers=levers)
    second = history(tmp_path, "second", precision, None, levers=levers)
    assert first == second
    assert len(first["loss"]) == TINY["epochs"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_steps_per_execution_changes_nothing(
    tmp_path: Path, restore_globals: None, precision: str
) -> None:
    """Running 6 steps per call into the backend learns exactly what 1 step per call does."""
    assert steps_per_execution(6) == 6
    one = history(tmp_path, "one", precision, 1)
    many = history(tmp_path, "many", precision, None)
    assert one == many


@pytest.mark.slow
def test_other_code_drawing_random_numbers_changes_nothing(
    tmp_path: Path, restore_globals: None
) -> None:
    """Every random choice in training has its own seeded generator, never the global ones."""
    alone = history(tmp_path, "alone", "float32", None)
    disturbed = history(tmp_path, "disturbed", "float32", None, draws_elsewhere=3)
    assert alone == disturbed


def test_steps_per_execution_divides_the_epoch() -> None:
    assert steps_per_execution(75) == 25
    assert steps_per_execution(150) == 25
    assert steps_per_execution(9) == 9
    assert steps_per_execution(97) == 1  # a prime: fall back to Keras' default
    assert steps_per_execution(40, limit=25) == 20


def test_the_training_stream_serves_the_generators_batches() -> None:
    """Under TensorFlow, fit reads a tf.data pipeline; it must hold the very same batches."""
    from agegap.dataset import training_batches, training_stream

    train, _ = tiny_sets()
    batches = 7  # more than one pass over the 20 images at 8 per batch: reshuffles too
    stream = training_stream(train, 8, seed=3, batches=batches)
    expected = list(itertools.islice(training_batches(train, 8, seed=3), batches))
    served = list(stream)
    assert len(served) == batches
    for (images, labels), (got_images, got_labels) in zip(expected, served, strict=True):
        np.testing.assert_array_equal(np.asarray(got_images), images)
        np.testing.assert_array_equal(np.asarray(got_labels), labels)
