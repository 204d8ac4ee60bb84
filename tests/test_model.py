"""The network: built from params, saved and loaded for every activation and depth."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from agegap.errors import AgegapError
from agegap.model import build_model, load_trained_model
from agegap.params import ACTIVATIONS, Params

# Every pair of values of the three settings, each once (pairwise): they act independently.
SHAPES = [
    ("relu", (4, 4, 8), "same"),
    ("relu", (4, 4, 8, 8), "valid"),
    ("prelu", (4, 4, 8), "valid"),
    ("prelu", (4, 4, 8, 8), "same"),
    ("leaky_relu", (4, 4, 8), "same"),
    ("leaky_relu", (4, 4, 8, 8), "valid"),
]


def test_the_shapes_cover_every_activation() -> None:
    assert {activation for activation, _, _ in SHAPES} == set(ACTIVATIONS)


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "filters", "padding"), SHAPES)
def test_every_activation_and_depth_saves_and_loads(
    tmp_path: Path, activation: str, filters: tuple[int, ...], padding: str
) -> None:
    params = Params(
        image_size=48, conv_filters=filters, kernel_size=3, padding=padding,
        activation=activation, dense_units=8, precision="float32",
    )
    model = build_model(params)
    images = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    expected = model.predict(images, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_trained_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, rtol=1e-6)
    assert loaded.input_shape == (None, 48, 48, 3)


def test_prelu_shares_its_slopes_across_space() -> None:
    params = Params(activation="prelu", precision="float32")
    model = build_model(params)
    prelu = model.get_layer("conv1_prelu")
    assert prelu.count_params() == 32  # one slope per channel, not 100*100*32
    relu = build_model(Params(activation="relu", precision="float32"))
    assert model.count_params() == relu.count_params() + 32 + 32 + 64


def test_rescaling_lives_inside_the_model() -> None:
    model = build_model(Params(image_size=32, conv_filters=(4,), dense_units=4))
    assert model.input.dtype == "uint8"
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)


def test_missing_and_corrupt_model_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(AgegapError, match="no such model file"):
        load_trained_model(tmp_path / "absent.keras")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip at all")
    with pytest.raises(AgegapError, match="not a loadable Keras model") as caught:
        load_trained_model(corrupt)
    assert "\n" not in str(caught.value)


def _blog_order_twin(model: keras.Model, params: Params) -> keras.Model:
    """The blog's Conv -> activation -> MaxPool order, sharing ``model``'s weights."""
    inputs = keras.Input(shape=model.input_shape[1:], dtype="uint8")
    x = model.get_layer("augmentation")(inputs)
    x = model.get_layer("rescaling")(x)
    for block in range(1, len(params.conv_filters) + 1):
        x = model.get_layer(f"conv{block}")(x)
        x = model.get_layer(f"conv{block}_{params.activation}")(x)
        x = model.get_layer(f"pool{block}")(x)
    for name in ("flatten", "dense", "dense_relu", "dropout", "p_young"):
        x = model.get_layer(name)(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_pooling_before_a_monotonic_activation_changes_no_number(activation: str) -> None:
    """The model pools before activating (cheaper); outputs and gradients must not move."""
    import tensorflow as tf

    params = Params(
        image_size=32, conv_filters=(4, 8), kernel_size=3, activation=activation,
        leaky_relu_slope=0.1, dense_units=8, dropout=0.0, precision="float32",
        batch_norm=False,
    )
    model = build_model(params)
    twin = _blog_order_twin(model, params)
    layers_in_order = [layer.name for layer in model.layers]
    assert layers_in_order.index("pool1") < layers_in_order.index(f"conv1_{activation}")
    images = tf.constant(np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), np.uint8))
    gradients = []
    for network in (model, twin):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(network(images, training=False) ** 2)
        gradients.append(tape.gradient(loss, network.trainable_weights))
        np.testing.assert_array_equal(network(images).numpy(), model(images).numpy())
    for ours, blog in zip(*gradients, strict=True):
        np.testing.assert_array_equal(ours.numpy(), blog.numpy())


def test_prelu_keeps_the_blogs_order() -> None:
    """PReLU's learned slope can go negative, so it does not commute with the max."""
    model = build_model(Params(activation="prelu", precision="float32", image_size=32))
    names = [layer.name for layer in model.layers]
    assert names.index("conv1_prelu") < names.index("pool1")
