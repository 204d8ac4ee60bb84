"""RandomAugmentation: the blog's Keras 2 ``ImageDataGenerator`` augmentation, batched.

The reference is Keras 2's own ``apply_affine_transform`` (from ``tf_keras``), so the
claim "same augmentation as the blog" is checked pixel by pixel, not argued.

Findings these tests pin down:

* **Edges.** With ``fill_mode="nearest"`` and bilinear sampling, Keras 3's
  ``ops.image.affine_transform`` (TensorFlow's ``ImageProjectiveTransformV3``) and
  Keras 2's ``scipy.ndimage.affine_transform(order=1, mode="nearest")`` agree on every
  pixel, edges included, to float32 rounding (max difference ~1e-3 of 255): both
  clamp the sampling point into the image before interpolating, and TensorFlow's
  out-of-range neighbour then gets a weight of exactly 0. So the whole image is
  compared, not only the interior.
* **Axis convention.** The blog ran Keras 2.0 (2017), whose ``apply_transform``
  applied the matrix in (row, col) order. keras-preprocessing 1.1 (2019, inherited by
  ``tf_keras``) swaps the axes for channels-last images, so today's
  ``ImageDataGenerator`` shears along the other axis and applies ``zx`` to columns.
  ``apply_affine_transform(..., row_axis=1, col_axis=0)`` on a square image skips that
  swap and reproduces the 2017 behaviour, which is what the layer implements. For the
  blog's ±0.2 degrees the two differ by at most 0.17 px; the zoom pair is i.i.d., so
  its distribution is the same either way. ``test_modern_tf_keras_is_the_transpose``
  documents the relation.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from unittest import mock

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from agegap.augment import RandomAugmentation, affine_rows
from agegap.model import build_model
from agegap.params import Params

SIDE = 30
CASES = [
    # shear (degrees), zoom of rows, zoom of columns, horizontal flip
    (0.2, 1.0, 1.0, False),  # the blog's largest shear alone
    (-0.15, 0.8, 1.2, True),  # the blog's range limits, flipped
    (10.0, 0.85, 1.15, False),  # a large shear, so an axis mix-up cannot hide
    (-7.0, 1.2, 0.9, True),
]


@pytest.fixture
def image() -> np.ndarray:
    """Random pixels: the hardest case for interpolation (no smoothness to hide behind)."""
    return np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3)).astype(np.float32)


def ours(image: np.ndarray, shear_degrees: float, zr: float, zc: float, flip: bool) -> np.ndarray:
    """The layer's arithmetic with fixed parameters instead of random ones."""

    def one(value: float) -> object:
        return ops.convert_to_tensor([value], dtype="float32")

    rows = affine_rows(
        one(math.radians(shear_degrees)), one(zr), one(zc), one(-1.0 if flip else 1.0), SIDE, SIDE
    )
    out = ops.image.affine_transform(
        image[None], rows, interpolation="bilinear", fill_mode="nearest",
        data_format="channels_last",
    )
    return ops.convert_to_numpy(out)[0]


@pytest.mark.parametrize(("shear", "zr", "zc", "flip"), CASES)
def test_matches_keras2(image: np.ndarray, shear: float, zr: float, zc: float, flip: bool) -> None:
    keras2 = pytest.importorskip("tf_keras.preprocessing.image")
    reference = keras2.apply_affine_transform(
        image, shear=shear, zx=zr, zy=zc, row_axis=1, col_axis=0, channel_axis=2,
        fill_mode="nearest", order=1,
    )
    if flip:  # ImageDataGenerator flips after the affine transform
        reference = reference[:, ::-1]
    np.testing.assert_allclose(ours(image, shear, zr, zc, flip), reference, atol=0.01)


def test_modern_tf_keras_is_the_transpose(image: np.ndarray) -> None:
    """Today's ``ImageDataGenerator`` axis order = ours on the transposed image."""
    keras2 = pytest.importorskip("tf_keras.preprocessing.image")
    shear, zx, zy = 10.0, 0.85, 1.15
    modern = keras2.apply_affine_transform(
        image, shear=shear, zx=zx, zy=zy, row_axis=0, col_axis=1, channel_axis=2,
        fill_mode="nearest", order=1,
    )
    transposed = ours(image.transpose(1, 0, 2), shear, zx, zy, False).transpose(1, 0, 2)
    np.testing.assert_allclose(transposed, modern, atol=0.01)
    assert np.abs(ours(image, shear, zx, zy, False) - modern).max() > 10  # really different


def test_identity_at_inference() -> None:
    batch = np.random.default_rng(1).integers(0, 256, (4, SIDE, SIDE, 3), dtype=np.uint8)
    layer = RandomAugmentation(shear_degrees=10, zoom=0.3, seed=1)
    out = ops.convert_to_numpy(layer(batch, training=False))
    np.testing.assert_array_equal(out, batch.astype(np.float32))
    assert not np.array_equal(ops.convert_to_numpy(layer(batch, training=True)), out)


def test_seeded() -> None:
    batch = np.random.default_rng(2).integers(0, 256, (8, SIDE, SIDE, 3), dtype=np.uint8)

    def run(seed: int) -> np.ndarray:
        layer = RandomAugmentation(shear_degrees=5, zoom=0.2, seed=seed)
        return np.stack([ops.convert_to_numpy(layer(batch, training=True)) for _ in range(2)])

    first, again, other = run(7), run(7), run(8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])  # each call draws new transforms


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_shape_and_dtype(policy: str, dtype: str) -> None:
    """Any input comes out float32 of the same shape, even under a bfloat16 policy:
    sampling in bfloat16 would round pixel values to 8 bits of mantissa."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = RandomAugmentation(seed=0)
        batch = np.random.default_rng(3).integers(0, 256, (3, 20, 24, 3)).astype(dtype)
        for training in (True, False):
            out = layer(batch, training=training)
            assert tuple(out.shape) == batch.shape
            assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_parameter_ranges() -> None:
    """Shear within ±0.2 degrees, each zoom in [0.8, 1.2] independently, flip half the time."""
    layer = RandomAugmentation(shear_degrees=0.2, zoom=0.2, flip=True, seed=4)
    rows = ops.convert_to_numpy(layer.random_transforms((4000, 100, 100, 3)))
    a0, b0, b1 = rows[:, 0], rows[:, 3], rows[:, 4]
    zoom_cols = np.hypot(a0, b0)  # |cos| * zc and |sin| * zc
    shear = np.degrees(np.arctan2(-b0 * np.sign(a0), np.abs(a0)))
    assert np.all(np.abs(shear) <= 0.2 + 1e-4)
    assert np.all((b1 >= 0.8 - 1e-6) & (b1 <= 1.2 + 1e-6))
    assert np.all((zoom_cols >= 0.8 - 1e-6) & (zoom_cols <= 1.2 + 1e-6))
    assert abs(np.corrcoef(b1, zoom_cols)[0, 1]) < 0.1  # independent per axis
    assert 0.45 < np.mean(a0 < 0) < 0.55


def test_cutout_hides_one_square_per_image_with_its_mean_colour() -> None:
    batch = np.random.default_rng(5).integers(0, 256, (64, 40, 40, 3), dtype=np.uint8)
    plain = RandomAugmentation(shear_degrees=0, zoom=0, flip=False, seed=0)
    assert plain.is_identity
    layer = RandomAugmentation(shear_degrees=0, zoom=0, flip=False, cutout=0.25, seed=0)
    assert not layer.is_identity
    out = ops.convert_to_numpy(layer(batch, training=True))
    sides = []
    for image, result in zip(batch.astype(np.float32), out, strict=True):
        changed = np.any(result != image, axis=-1)
        rows, cols = np.nonzero(changed)
        # one axis-aligned rectangle, at most 10 x 10 pixels (a quarter of 40), less where
        # the border clips it, filled with the image's mean colour
        assert rows.size > 0
        box = np.s_[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert changed[box].all() and changed.sum() == changed[box].size
        assert changed[box].shape[0] <= 10 and changed[box].shape[1] <= 10
        np.testing.assert_allclose(result[box], np.broadcast_to(
            image.mean(axis=(0, 1)), result[box].shape), rtol=1e-5)
        sides.append(changed[box].shape)
    assert (10, 10) in sides and len(set(sides)) > 1  # whole squares and clipped ones
    np.testing.assert_array_equal(  # nothing at inference
        ops.convert_to_numpy(layer(batch, training=False)), batch.astype(np.float32))


def test_cutout_comes_after_the_other_draws() -> None:
    """Runs without cutout keep the transforms they drew before cutout existed."""
    batch = np.random.default_rng(6).integers(0, 256, (8, SIDE, SIDE, 3), dtype=np.uint8)
    without = RandomAugmentation(shear_degrees=5, zoom=0.2, rotate_degrees=10, shift=0.1, seed=3)
    with_cutout = RandomAugmentation(
        shear_degrees=5, zoom=0.2, rotate_degrees=10, shift=0.1, cutout=0.3, seed=3
    )
    a = ops.convert_to_numpy(without(batch, training=True))
    b = ops.convert_to_numpy(with_cutout(batch, training=True))
    untouched = np.all(a == b, axis=-1)
    assert 0.5 < untouched.mean() < 1.0  # the same affine output wherever no square fell


@pytest.mark.slow
def test_model_saves_and_loads(tmp_path: Path) -> None:
    params = Params(
        image_size=32, conv_filters=(4, 4), kernel_size=3, dense_units=8, seed=5,
        augment_rotate_degrees=10.0, augment_shift=0.1, augment_cutout=0.3,
    )
    model = build_model(params)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    layer = loaded.get_layer("augmentation")
    assert isinstance(layer, RandomAugmentation)
    assert (layer.shear_degrees, layer.zoom, layer.flip, layer.seed) == (0.2, 0.2, True, 5)
    assert (layer.rotate_degrees, layer.shift, layer.cutout) == (10.0, 0.1, 0.3)


@pytest.mark.slow
def test_a_model_saved_under_the_layers_old_name_still_loads(tmp_path: Path) -> None:
    """Models in DVC caches and experiments were saved when the layer was ``BlogAugmentation``."""
    model = build_model(Params(image_size=32, conv_filters=(4,), kernel_size=3, dense_units=8))
    path = tmp_path / "model.keras"
    model.save(path)
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(path) as new_zip, zipfile.ZipFile(old, "w") as old_zip:
        for item in new_zip.infolist():
            data = new_zip.read(item)
            if item.filename == "config.json":
                assert b"agegap>RandomAugmentation" in data
                data = data.replace(b"RandomAugmentation", b"BlogAugmentation")
            old_zip.writestr(item, data)
    loaded = keras.saving.load_model(old, compile=False)
    assert isinstance(loaded.get_layer("augmentation"), RandomAugmentation)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(images)), ops.convert_to_numpy(model(images)))
    batch = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(batch, training=False)),
        ops.convert_to_numpy(model(batch, training=False)),
        rtol=1e-6,
    )


ROBUSTNESS_LEVERS = {
    "scale": 0.4, "grayscale": 0.5, "brightness": 0.3, "contrast": 0.3, "saturation": 0.5,
    "blur": 1.5, "jpeg": 1.0,
}


@pytest.mark.parametrize("lever", sorted(ROBUSTNESS_LEVERS))
def test_robustness_levers_come_after_every_other_draw(lever: str) -> None:
    """Turning a robustness lever on changes nothing of what the other draws did:
    runs without it keep every transform they had before it existed."""
    batch = np.random.default_rng(7).integers(0, 256, (8, SIDE, SIDE, 3), dtype=np.uint8)
    base = {"shear_degrees": 5, "zoom": 0.2, "cutout": 0.3, "seed": 3}
    without = ops.convert_to_numpy(RandomAugmentation(**base)(batch, training=True))
    layer = RandomAugmentation(**base, **{lever: ROBUSTNESS_LEVERS[lever]})
    assert not layer.is_identity
    with_lever = ops.convert_to_numpy(layer(batch, training=True))
    assert not np.array_equal(with_lever, without)
    assert with_lever.min() >= 0 and with_lever.max() <= 255
    np.testing.assert_array_equal(  # nothing at inference
        ops.convert_to_numpy(layer(batch, training=False)), batch.astype(np.float32))


def test_grayscale_turns_the_chosen_share_black_and_white() -> None:
    batch = np.random.default_rng(8).integers(0, 256, (400, 8, 8, 3), dtype=np.uint8)
    layer = RandomAugmentation(shear_degrees=0, zoom=0, flip=False, grayscale=0.5, seed=0)
    out = ops.convert_to_numpy(layer(batch, training=True))
    gray = np.all(out[..., :1] == out, axis=(1, 2, 3))
    assert 0.4 < gray.mean() < 0.6
    luma = batch[gray].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out[gray][..., 0], luma, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(out[~gray], batch[~gray].astype(np.float32))


def test_scale_zooms_both_ways_onto_a_flat_colour() -> None:
    """Zoom factors spread over [1/1.4, 1.4] in both directions; pixels from outside the
    image are one flat colour per image, not the smeared edge."""
    layer = RandomAugmentation(shear_degrees=0, zoom=0, flip=False, scale=0.4, seed=2)
    rows = ops.convert_to_numpy(layer.random_transforms((4000, 100, 100, 3)))
    factor = rows[:, 0]
    assert factor.min() >= 1 / 1.4 - 1e-5 and factor.max() <= 1.4 + 1e-5
    assert 0.4 < np.mean(factor > 1) < 0.6
    batch = np.full((32, 20, 20, 3), 200, np.uint8)
    out = ops.convert_to_numpy(layer(batch, training=True))
    for image in out:
        corner = image[0, 0]
        if np.array_equal(corner, [200, 200, 200]):
            continue  # zoomed in: nothing from outside
        border = image[0]
        np.testing.assert_array_equal(border, np.broadcast_to(corner, border.shape))


def test_blur_smooths_and_a_zero_sigma_keeps_the_image() -> None:
    from agegap.augment import gaussian_blur

    batch = np.random.default_rng(9).integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
    out = ops.convert_to_numpy(gaussian_blur(ops.convert_to_tensor(batch), ops.convert_to_tensor(
        np.array([0.0, 1.5], np.float32))))
    np.testing.assert_allclose(out[0], batch[0], atol=1e-3)
    assert out[1].std() < 0.6 * batch[1].std()
    np.testing.assert_allclose(out[1].mean(), batch[1].mean(), rtol=0.02)


def test_colour_changes_compose_to_one_after_the_other() -> None:
    """Brightness, contrast, saturation and grayscale, composed into one colour map per
    image, give what applying them one after the other with the same draws gives."""
    batch = np.random.default_rng(13).integers(0, 256, (64, 8, 8, 3)).astype(np.float32)
    layer = RandomAugmentation(shear_degrees=0, zoom=0, flip=False, brightness=0.3,
                               contrast=0.3, saturation=0.5, grayscale=0.5, seed=4)
    draws = []
    uniform = keras.random.uniform

    def recorded(*args, **kwargs):
        draws.append(ops.convert_to_numpy(uniform(*args, **kwargs)))
        return draws[-1]

    with mock.patch.object(keras.random, "uniform", recorded):
        out = ops.convert_to_numpy(layer(batch, training=True))
    brightness, contrast, saturation, coin = draws[-4:]
    weights = np.array([0.299, 0.587, 0.114], np.float32)

    def luma(images: np.ndarray) -> np.ndarray:
        return (images @ weights)[..., None]

    expected = batch * brightness
    mean = luma(expected).mean(axis=(1, 2, 3), keepdims=True)
    expected = mean + (expected - mean) * contrast
    expected = luma(expected) + (expected - luma(expected)) * saturation
    expected = np.where(coin < 0.5, luma(expected), expected).clip(0, 255)
    np.testing.assert_allclose(out, expected, atol=2e-3)


def test_blur_gives_each_image_its_own_kernel() -> None:
    """The blur of a batch is each image's separable Gaussian at its own sigma, edges
    reflected, on images that are not square."""
    from agegap.augment import BLUR_RADIUS, gaussian_blur

    batch = np.random.default_rng(14).integers(0, 256, (3, 12, 9, 3)).astype(np.float32)
    sigmas = np.array([0.3, 0.8, 1.5], np.float32)
    out = ops.convert_to_numpy(gaussian_blur(ops.convert_to_tensor(batch),
                                             ops.convert_to_tensor(sigmas)))
    taps = np.arange(-BLUR_RADIUS, BLUR_RADIUS + 1)
    for image, sigma, blurred in zip(batch, sigmas, out, strict=True):
        kernel = np.exp(-(taps**2) / (2 * sigma**2 + 1e-6))
        kernel /= kernel.sum()
        padded = np.pad(image, [(BLUR_RADIUS,) * 2, (BLUR_RADIUS,) * 2, (0, 0)], mode="reflect")
        rows = sum(w * padded[k : k + 12] for k, w in enumerate(kernel))
        expected = sum(w * rows[:, k : k + 9] for k, w in enumerate(kernel))
        np.testing.assert_allclose(blurred, expected, atol=2e-3)


def test_jpeg_is_pils_codec_at_the_drawn_quality() -> None:
    """The JPEG lever saves each image as PIL's JPEG probe does (both are libjpeg; the
    decoders' DCT may differ by a level or two), at the quality given per image."""
    from agegap.augment import jpeg_codec

    def pil_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer), dtype=np.float32)

    ramp = np.linspace(0, 255, 48, dtype=np.float32)
    rows, cols = np.meshgrid(ramp, ramp, indexing="ij")
    image = np.stack([rows, 0.5 * cols, np.full_like(rows, 90.0)], axis=-1)
    image[12:30, 17:35] = (250, 20, 40)  # sharp edges: the ringing depends on the quality
    batch = np.stack([image, image]).clip(0, 255).round().astype(np.uint8)
    qualities = (25, 90)
    out = ops.convert_to_numpy(jpeg_codec(
        ops.convert_to_tensor(batch.astype(np.float32)), ops.convert_to_tensor(qualities)))
    for saved, quality, other in zip(out, qualities, qualities[::-1], strict=True):
        own = np.abs(saved - pil_jpeg(batch[0], quality)).mean()
        assert own < 1.0
        assert own < np.abs(saved - pil_jpeg(batch[0], other)).mean() / 2
    loss = np.abs(out - batch).mean(axis=(1, 2, 3))
    assert loss[0] > loss[1] > 0  # quality 25 loses more than 90, which still loses


def test_jpeg_resaves_the_chosen_share() -> None:
    batch = np.random.default_rng(12).integers(0, 256, (200, 16, 16, 3), dtype=np.uint8)
    layer = RandomAugmentation(shear_degrees=0, zoom=0, flip=False, jpeg=0.5, seed=0)
    out = ops.convert_to_numpy(layer(batch, training=True))
    kept = np.all(out == batch, axis=(1, 2, 3))
    assert 0.35 < kept.mean() < 0.65


@pytest.mark.slow
def test_grayscale_input_model_ignores_colour_and_saves(tmp_path: Path) -> None:
    params = Params(
        image_size=16, conv_filters=(4,), kernel_size=3, dense_units=4, seed=1,
        input_grayscale=True, augment_scale=0.2, augment_grayscale=0.5, augment_blur=1.0,
    )
    model = build_model(params)
    colour = np.random.default_rng(10).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    luma = colour.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    seen = ops.convert_to_numpy(model.get_layer("grayscale")(colour.astype(np.float32)))
    np.testing.assert_allclose(seen, np.repeat(luma[..., None], 3, axis=-1), rtol=1e-5)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    layer = loaded.get_layer("augmentation")
    assert (layer.scale, layer.grayscale, layer.blur) == (0.2, 0.5, 1.0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(colour)), ops.convert_to_numpy(model(colour)), rtol=1e-6)
