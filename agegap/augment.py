"""The blog's Keras 2 augmentation, as one batched affine transform per batch.

``ImageDataGenerator(shear_range=0.2, zoom_range=0.2, horizontal_flip=True)`` meant:
a shear angle uniform in ±0.2 **degrees**, a zoom factor drawn **independently per
axis** in [0.8, 1.2], pixels outside filled with the nearest edge, and a horizontal
flip half of the time. Keras 3's ``RandomShear(0.2)`` shears by about ±11 degrees
and ``RandomZoom`` keeps the aspect ratio, so they are another augmentation, and
they run per image outside XLA (91 images/s on an H100, see issue 6). Here all
three are folded into one 2x3 matrix per image and applied to the whole batch with
a single ``keras.ops.image.affine_transform`` call. On JAX it compiles into the
model's XLA step; on TensorFlow it is one ``ImageProjectiveTransformV3`` op, which has
no XLA kernel (so TensorFlow trains without XLA; on a CPU that is also the faster
choice, see docs/performance.md), about 7 CPU-ms per batch of 16 on a 2-core CPU.

The matrix follows Keras 2.0 as the blog ran it in 2017, in (row, col) order; later
Keras 2 releases (keras-preprocessing 1.1, ``tf_keras``) swapped the axes, so their
shear runs along the other axis. tests/test_augment.py compares both, pixel by pixel.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="agegap")
class BlogAugmentation(keras.layers.Layer):
    """Random shear (degrees), per-axis zoom and horizontal flip; active only in training.

    Matches Keras 2's ``apply_affine_transform``: the matrix maps output pixels to
    input pixels around the image centre, bilinear sampling, ``fill_mode="nearest"``,
    and the flip applied after the affine part.
    """

    def __init__(
        self,
        shear_degrees: float = 0.2,
        zoom: float = 0.2,
        flip: bool = True,
        seed: int | None = None,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("dtype", "float32")  # sampling in bf16 would blur; the cost is nil
        super().__init__(**kwargs)
        self.shear_degrees = float(shear_degrees)
        self.zoom = float(zoom)
        self.flip = bool(flip)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    @property
    def is_identity(self) -> bool:
        return self.shear_degrees == 0 and self.zoom == 0 and not self.flip

    def call(self, images, training: bool = False):
        images = ops.cast(images, self.compute_dtype)
        if not training or self.is_identity:
            return images
        return ops.image.affine_transform(
            images,
            self.random_transforms(ops.shape(images)),
            interpolation="bilinear",
            fill_mode="nearest",
            data_format="channels_last",
        )

    def random_transforms(self, shape):
        """One ``[a0, a1, a2, b0, b1, b2, 0, 0]`` row per image (output -> input pixel)."""
        batch, height, width = shape[0], shape[1], shape[2]
        dtype = self.compute_dtype
        limit = math.radians(self.shear_degrees)
        shear = keras.random.uniform(
            (batch,), -limit, limit, dtype=dtype, seed=self.seed_generator
        )
        zoom_rows = keras.random.uniform(
            (batch,), 1 - self.zoom, 1 + self.zoom, dtype=dtype, seed=self.seed_generator
        )
        zoom_cols = keras.random.uniform(
            (batch,), 1 - self.zoom, 1 + self.zoom, dtype=dtype, seed=self.seed_generator
        )
        if self.flip:
            coin = keras.random.uniform((batch,), 0, 1, dtype=dtype, seed=self.seed_generator)
            sign = ops.where(coin < 0.5, -1.0, 1.0)
        else:
            sign = ops.ones((batch,), dtype=dtype)
        return affine_rows(shear, zoom_rows, zoom_cols, sign, height, width)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            shear_degrees=self.shear_degrees, zoom=self.zoom, flip=self.flip, seed=self.seed
        )
        return config


def affine_rows(shear, zoom_rows, zoom_cols, sign, height, width):
    """Transform rows for ``affine_transform`` from per-image parameters (tensors of shape (n,)).

    ``shear`` is in radians, ``sign`` is -1 for a horizontal flip and +1 otherwise.
    Keras 2 works in (row, col): input = S Z (output - c) + c, with
    S = [[1, -sin], [0, cos]], Z = diag(zoom_rows, zoom_cols) and c the pixel centre
    ((n - 1) / 2). In (x=col, y=row): x_in = cos*zc*x', y_in = -sin*zc*x' + zr*y',
    where x' = sign*(x - cx) does the flip, which Keras 2 applied after the transform.
    """
    dtype = shear.dtype
    cx = (ops.cast(width, dtype) - 1.0) / 2.0
    cy = (ops.cast(height, dtype) - 1.0) / 2.0
    a0 = ops.cos(shear) * zoom_cols * sign
    b0 = -ops.sin(shear) * zoom_cols * sign
    b1 = zoom_rows
    a2 = cx - a0 * cx
    b2 = cy - b0 * cx - b1 * cy
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, zeros, a2, b0, b1, b2, zeros, zeros], axis=1)
