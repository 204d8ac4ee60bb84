"""The network: built from params, saved and loaded for every activation and depth."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from agegap.errors import AgegapError
from agegap.model import build_model, load_trained_model
from agegap.params import ACTIVATIONS, Params


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("filters", [(4, 4, 8), (4, 4, 8, 8)])
@pytest.mark.parametrize("padding", ["same", "valid"])
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
