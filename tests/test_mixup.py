"""Mixup (an accuracy lever): blended batches, fractional labels, an accuracy that copes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from agegap.dataset import mixup_draws, training_batches, training_stream
from agegap.params import Params
from agegap.runtime import configure
from agegap.training import majority_label_accuracy, train_model
from tests.synthetic import tiny_image_set


def test_mixup_blends_each_image_with_a_batch_mate_and_its_label_alike() -> None:
    data = tiny_image_set(24, 12, seed=5, noise=100)
    batches = 7  # past one pass over 24 images at 8 a batch: the order reshuffles
    plain = itertools.islice(training_batches(data, 8, seed=2), batches)
    mixed = itertools.islice(training_batches(data, 8, seed=2, mixup_alpha=0.4), batches)
    draws = itertools.islice(mixup_draws(8, 0.4, seed=2), batches)
    fractional = 0
    for (images, labels), (mixed_images, mixed_labels), (partners, weights) in zip(
        plain, mixed, draws, strict=True
    ):
        assert mixed_images.dtype == np.uint8
        assert np.all((weights >= 0) & (weights <= 1))
        for i, (partner, weight) in enumerate(zip(partners, weights, strict=True)):
            blend = weight * images[i].astype(float) + (1 - weight) * images[partner]
            assert np.abs(mixed_images[i] - blend).max() <= 0.5 + 1e-3
            label = weight * labels[i] + (1 - weight) * labels[partner]
            assert mixed_labels[i] == pytest.approx(label)
        fractional += int(np.sum((mixed_labels > 0.01) & (mixed_labels < 0.99)))
    assert fractional > 0  # some batch-mates of the other class were blended in


def test_mixup_leaves_the_batch_order_alone() -> None:
    """Its draws come from their own generator: each step still sees the same images."""
    data = tiny_image_set(24, 12, seed=5, noise=100)
    batches = list(itertools.islice(training_batches(data, 8, seed=4, mixup_alpha=1e-6), 5))
    plain = list(itertools.islice(training_batches(data, 8, seed=4), 5))
    for (mixed_images, _), (images, _) in zip(batches, plain, strict=True):
        # At alpha ~ 0 every weight is ~0 or ~1: each mixed image is one of its batch's.
        for image in mixed_images:
            assert min(np.abs(image.astype(int) - other).max() for other in images) <= 1


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_the_tensorflow_stream_serves_the_same_mixed_batches(alpha: float) -> None:
    pytest.importorskip("tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data stream is the TensorFlow backend's")
    data = tiny_image_set(24, 12, seed=5, noise=100)
    expected = list(itertools.islice(training_batches(data, 8, 3, alpha), 6))
    served = list(training_stream(data, 8, 3, batches=6, mixup_alpha=alpha))
    assert len(served) == 6
    for (images, labels), (got_images, got_labels) in zip(expected, served, strict=True):
        np.testing.assert_array_equal(np.asarray(got_images), images)
        np.testing.assert_array_equal(np.asarray(got_labels), labels)


def test_accuracy_counts_a_mixed_label_by_its_larger_side() -> None:
    import keras

    y_true = np.array([0.3, 0.8, 0.0, 1.0, 0.6], np.float32)
    y_pred = np.array([[0.2], [0.9], [0.7], [0.6], [0.4]], np.float32)
    hits = keras.ops.convert_to_numpy(majority_label_accuracy(y_true, y_pred)).ravel()
    np.testing.assert_array_equal(hits, [1, 1, 0, 1, 0])


@pytest.mark.slow
def test_a_mixup_run_trains_and_reports_a_real_training_accuracy(
    tmp_path: Path, restore_globals: None
) -> None:
    data = tiny_image_set(32, 12, seed=5, noise=100)
    params = Params(image_size=12, conv_filters=(8,), kernel_size=3, dense_units=8,
                    batch_size=8, epochs=20, train_images_per_epoch=0, mixup_alpha=0.4,
                    learning_rate=0.01, lr_schedule="constant", weight_decay=0.0,
                    augment_rotate_degrees=0.0, augment_shift=0.0, label_smoothing=0.0,
                    precision="float32", batch_norm=False)
    configure(params)  # seeds the weights too: the same run whatever ran before it
    result = train_model(params, data, data, tmp_path / "m.keras", verbose=0)
    # Keras' own binary accuracy would count almost no fractional label as right.
    assert np.mean(result.history["accuracy"][-5:]) > 0.9
    assert (tmp_path / "m.keras").is_file()
