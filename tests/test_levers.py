"""The accuracy levers, each doing what it says (cutout is on by default)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from agegap.augment import RandomAugmentation
from agegap.model import build_model, load_trained_model, make_optimizer
from agegap.params import Params
from agegap.scoring import predict_probabilities
from agegap.training import train_model
from tests.synthetic import tiny_image_set


def test_rotation_matches_keras2_apply_affine_transform() -> None:
    tf_keras_image = pytest.importorskip("tf_keras.preprocessing.image")
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (40, 40, 3)).astype(np.float32)
    from agegap.augment import affine_rows

    def tensor(value: float) -> object:
        return keras.ops.convert_to_tensor(np.array([value], np.float32))

    rows = affine_rows(tensor(np.radians(3.0)), tensor(1.1), tensor(0.9), tensor(1.0), 40, 40,
                       rotation=tensor(np.radians(12.0)))
    ours = keras.ops.convert_to_numpy(keras.ops.image.affine_transform(
        image[None], rows, interpolation="bilinear", fill_mode="nearest"))[0]
    # row_axis=1, col_axis=0: the 2017 (row, col) convention, as in test_augment.py
    theirs = tf_keras_image.apply_affine_transform(
        image, theta=12.0, shear=3.0, zx=1.1, zy=0.9,
        row_axis=1, col_axis=0, channel_axis=2, fill_mode="nearest", order=1,
    )
    np.testing.assert_allclose(ours, theirs, atol=0.01)


def test_rotation_and_shift_move_pixels_and_stay_seeded() -> None:
    images = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3)).astype("float32")
    layer = RandomAugmentation(shear_degrees=0, zoom=0, flip=False, rotate_degrees=20,
                             shift=0.1, seed=3)
    moved = keras.ops.convert_to_numpy(layer(images, training=True))
    again = keras.ops.convert_to_numpy(
        RandomAugmentation(shear_degrees=0, zoom=0, flip=False, rotate_degrees=20, shift=0.1,
                         seed=3)(images, training=True))
    assert not np.allclose(moved, images)
    np.testing.assert_array_equal(moved, again)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images)), images)


@pytest.mark.slow
def test_batch_norm_model_saves_and_loads(tmp_path: Path) -> None:
    params = Params(image_size=32, conv_filters=(4, 8), kernel_size=3, dense_units=8,
                    batch_norm=True, precision="float32")
    model = build_model(params)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 2
    assert model.get_layer("conv1").use_bias is False
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    model.save(tmp_path / "bn.keras")
    np.testing.assert_allclose(load_trained_model(tmp_path / "bn.keras").predict(images, verbose=0),
                               model.predict(images, verbose=0), rtol=1e-6)


def test_cosine_schedule_and_weight_decay_reach_the_optimizer() -> None:
    optimizer = make_optimizer(Params(lr_schedule="cosine", weight_decay=0.01), total_steps=100)
    schedule = optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert float(schedule(0)) == pytest.approx(0.001)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    assert optimizer.weight_decay == pytest.approx(0.01)


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    train = validation = tiny_image_set(32, 16)
    params = Params(image_size=16, conv_filters=(4,), kernel_size=3, dense_units=4,
                    batch_size=8, epochs=30, train_images_per_epoch=0, learning_rate=1e-12,
                    early_stopping_patience=2, precision="float32",
                    batch_norm=False)  # its moving statistics would still move at lr 0
    result = train_model(params, train, validation, tmp_path / "m.keras", verbose=0)
    assert result.epochs == 30
    assert result.epochs_run == 3  # lr 0: nothing improves after epoch 1, patience 2
    assert result.best_epoch == 1


@pytest.mark.slow
def test_tta_flip_averages_an_image_with_its_mirror() -> None:
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    plain = predict_probabilities(model, images)
    mirrored = predict_probabilities(model, images[:, :, ::-1, :])
    averaged = predict_probabilities(model, images, tta_flip=True)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=1e-6)


def test_weight_averaging_reaches_the_optimizer() -> None:
    averaged = make_optimizer(Params(weight_ema=0.999))
    assert averaged.use_ema and averaged.ema_momentum == pytest.approx(0.999)
    assert not make_optimizer(Params()).use_ema


class _FirstWeights(keras.callbacks.Callback):
    """The model's weights before its first step."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.weights = [np.array(w) for w in self.model.get_weights()]


@pytest.mark.slow
def test_the_saved_model_is_the_weight_average(tmp_path: Path) -> None:
    """With a momentum close to 1 the average stays where the first step left the weights
    (Keras starts it there), while the weights as trained move on: the checkpoint holds
    the average."""
    train = validation = tiny_image_set(32, 16)
    params = Params(image_size=16, conv_filters=(4,), kernel_size=3, dense_units=4,
                    batch_size=8, epochs=3, train_images_per_epoch=0, learning_rate=0.05,
                    precision="float32", batch_norm=False, lr_schedule="constant",
                    weight_ema=0.999999)
    first = _FirstWeights()
    train_model(params, train, validation, tmp_path / "m.keras", [first], verbose=0)
    def farthest(path: Path) -> float:
        weights = load_trained_model(path).get_weights()
        return max(float(np.abs(a - b).max()) for a, b in zip(first.weights, weights, strict=True))

    one_step = 1.01 * params.learning_rate  # Adam moves a weight by at most about lr a step
    assert farthest(tmp_path / "m.keras") <= one_step
    plain = Params(**{**params.model_dump(), "weight_ema": 0.0})
    train_model(plain, train, validation, tmp_path / "p.keras", [first], verbose=0)
    assert farthest(tmp_path / "p.keras") > 3 * one_step


def test_the_residual_network_adds_shortcuts_and_averages_globally(tmp_path: Path) -> None:
    params = Params(image_size=32, conv_filters=(4, 8), kernel_size=3, dense_units=8,
                    architecture="residual", precision="float32")
    model = build_model(params)
    names = [layer.name for layer in model.layers]
    assert [n for n in names if n.endswith("_add")] == ["res1_add", "res2_add"]
    assert "res1_shortcut" in names and "res2_shortcut" in names  # 3 -> 4 -> 8 channels
    assert "global_average" in names and "flatten" not in names
    assert model.get_layer("res2_pool").output.shape[1:] == (8, 8, 8)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    model.save(tmp_path / "residual.keras")
    np.testing.assert_allclose(
        load_trained_model(tmp_path / "residual.keras").predict(images, verbose=0),
        model.predict(images, verbose=0), rtol=1e-6)
    same_width = build_model(Params(**{**params.model_dump(), "conv_filters": (3, 3)}))
    assert "res1_shortcut" not in [layer.name for layer in same_width.layers]


def test_the_residual_network_needs_same_padding() -> None:
    from agegap.errors import AgegapError
    from agegap.params import params_from_dict

    with pytest.raises(AgegapError, match="architecture='residual' needs padding='same'"):
        params_from_dict({"architecture": "residual", "padding": "valid"})


@pytest.mark.slow
def test_an_ensemble_saves_one_model_that_averages_its_members(tmp_path: Path) -> None:
    from agegap.ensemble import member_params, train_ensemble

    train = validation = tiny_image_set(32, 16)
    params = Params(image_size=16, conv_filters=(4,), kernel_size=3, dense_units=4,
                    batch_size=8, epochs=2, train_images_per_epoch=0, precision="float32",
                    batch_norm=False, ensemble_size=2, seed=5)
    assert [member_params(params, i).seed for i in range(2)] == [5, 6]
    result = train_ensemble(params, train, validation, tmp_path / "e.keras", verbose=0)
    ensemble = load_trained_model(tmp_path / "e.keras")
    members = [ensemble.get_layer(f"member{i}") for i in range(2)]
    images = validation.images
    expected = np.mean([m.predict(images, verbose=0).reshape(-1) for m in members], axis=0)
    averaged = predict_probabilities(ensemble, images)
    np.testing.assert_allclose(averaged, expected, rtol=1e-5)
    assert not np.allclose(*[m.get_weights()[0] for m in members])  # trained apart
    scored = np.mean((averaged >= 0.5) == validation.labels.reshape(-1))
    assert result.best_val_accuracy == pytest.approx(scored)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.keras"]  # members cleaned up
