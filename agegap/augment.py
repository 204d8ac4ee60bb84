"""Training augmentation as one batched affine transform per batch, inside the model.

The geometry reproduces the blog's Keras 2 ``ImageDataGenerator``; docs/design.md says how.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from agegap import JPEG_QUALITIES


@keras.saving.register_keras_serializable(package="agegap")
class RandomAugmentation(keras.layers.Layer):
    """Random geometric and photometric changes of each training image; off at inference.

    The blog's three: shear (degrees), per-axis zoom and horizontal flip.

    Beyond the blog, each off unless asked for: rotation, shift, a change of scale (onto
    a flat background where it zooms out), cutout, and the photometric changes
    (brightness, contrast, saturation, grayscale, blur, JPEG) that keep a model from
    judging the photograph instead of the face.

    Matches Keras 2's ``apply_affine_transform``: the matrix maps output pixels to
    input pixels around the image centre, bilinear sampling, ``fill_mode="nearest"``,
    and the flip applied after the affine part.
    """

    def __init__(
        self,
        shear_degrees: float = 0.2,
        zoom: float = 0.2,
        flip: bool = True,
        rotate_degrees: float = 0.0,
        shift: float = 0.0,
        cutout: float = 0.0,
        seed: int | None = None,
        scale: float = 0.0,
        grayscale: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        blur: float = 0.0,
        jpeg: float = 0.0,
        **kwargs: object,
    ) -> None:
        kwargs.setdefault("dtype", "float32")  # sampling in bf16 would blur; the cost is nil
        super().__init__(**kwargs)
        self.shear_degrees = float(shear_degrees)
        self.zoom = float(zoom)
        self.flip = bool(flip)
        self.rotate_degrees = float(rotate_degrees)
        self.shift = float(shift)
        self.cutout = float(cutout)
        self.scale = float(scale)
        self.grayscale = float(grayscale)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.blur = float(blur)
        self.jpeg = float(jpeg)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    @property
    def is_identity(self) -> bool:
        return (
            self.shear_degrees == 0
            and self.zoom == 0
            and not self.flip
            and self.rotate_degrees == 0
            and self.shift == 0
            and self.cutout == 0
            and self.scale == 0
            and not self.is_photometric
        )

    @property
    def is_photometric(self) -> bool:
        """Whether any colour, tone or sharpness change is asked for."""
        return any((self.grayscale, self.brightness, self.contrast, self.saturation, self.blur,
                    self.jpeg))

    def call(self, images, training: bool = False):
        images = ops.cast(images, self.compute_dtype)
        if not training or self.is_identity:
            return images
        transforms = self.random_transforms(ops.shape(images))
        images = ops.image.affine_transform(
            images,
            transforms,
            interpolation="bilinear",
            fill_mode="nearest",
            data_format="channels_last",
        )
        if self.scale:
            images = self.fill_outside(images, transforms)
        if self.cutout:
            images = self.cut_out(images)
        return self.photometric(images) if self.is_photometric else images

    def fill_outside(self, images, transforms):
        """Pixels sampled from outside the image become one random flat colour per image:
        a looser crop shows a background around the face, not its edge pixels smeared
        (used with ``scale``, whose zoom-out brings in far more of them)."""
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        dtype = self.compute_dtype
        rows = ops.arange(height, dtype=dtype)[None, :, None]
        cols = ops.arange(width, dtype=dtype)[None, None, :]
        t = [transforms[:, i][:, None, None] for i in range(6)]
        x_in = t[0] * cols + t[1] * rows + t[2]
        y_in = t[3] * cols + t[4] * rows + t[5]
        side_x, side_y = ops.cast(width, dtype), ops.cast(height, dtype)
        outside = (x_in < -0.5) | (x_in > side_x - 0.5) | (y_in < -0.5) | (y_in > side_y - 0.5)
        colour = keras.random.uniform((batch, 1, 1, 3), 0, 255, dtype=dtype,
                                      seed=self.seed_generator)
        return ops.where(outside[..., None], colour, images)

    def photometric(self, images):
        """Random brightness, contrast and saturation factors in [1 - x, 1 + x] (as PIL's
        ImageEnhance), grayscale with probability ``grayscale``, a Gaussian blur of a
        random sigma up to ``blur`` pixels, and a share ``jpeg`` of the images saved again
        as JPEG at a random quality: the film, print and file change, the face does not.

        The four colour changes are each affine in a pixel's colour, so they are composed
        per image into one :class:`ColourMap` and cost one pass over the pixels, not one
        or more each."""
        batch = ops.shape(images)[0]
        dtype = self.compute_dtype

        def factors(spread):
            drawn = keras.random.uniform(
                (batch, 1, 1, 1), 1 - spread, 1 + spread, dtype=dtype, seed=self.seed_generator
            )
            return ops.reshape(drawn, (-1, 1, 1))

        identity = ops.eye(3, dtype=dtype)[None]
        to_gray = ops.repeat(ops.convert_to_tensor(LUMA, dtype=dtype)[None, :, None], 3, axis=2)
        colour = ColourMap.identity(batch, dtype) if self.is_colour else None
        if self.brightness:
            colour = colour.then(factors(self.brightness) * identity)
        if self.contrast:
            # The mean luma of the image as it stands, from the input's channel means.
            means = colour.apply_to_colours(ops.mean(images, axis=(1, 2)))
            mean_luma = ops.sum(means * ops.convert_to_tensor(LUMA, dtype=dtype), axis=1)
            factor = factors(self.contrast)
            colour = colour.then(factor * identity,
                                 (1 - factor[:, 0]) * mean_luma[:, None] * ops.ones((1, 3), dtype))
        if self.saturation:
            factor = factors(self.saturation)
            colour = colour.then(factor * identity + (1 - factor) * to_gray)
        if self.grayscale:
            coin = keras.random.uniform((batch, 1, 1, 1), 0, 1, dtype=dtype,
                                        seed=self.seed_generator)
            colour = colour.then(ops.where(ops.reshape(coin, (-1, 1, 1)) < self.grayscale,
                                           to_gray, identity))
        if colour is not None:
            images = colour.apply_to_images(images)
        if self.blur:
            sigma = keras.random.uniform((batch,), 0, self.blur, dtype=dtype,
                                         seed=self.seed_generator)
            images = gaussian_blur(images, sigma)
        images = ops.clip(images, 0, 255)
        return self.resave_as_jpeg(images) if self.jpeg else images

    @property
    def is_colour(self) -> bool:
        """Whether any of the colour changes that :class:`ColourMap` composes is asked for."""
        return any((self.brightness, self.contrast, self.saturation, self.grayscale))

    def resave_as_jpeg(self, images):
        """A share ``jpeg`` of the images encoded and decoded as JPEG, each at a quality
        drawn from :data:`JPEG_QUALITIES`: the blocks and ringing of a small web copy."""
        batch = ops.shape(images)[0]
        quality = keras.random.randint((batch,), JPEG_QUALITIES[0], JPEG_QUALITIES[1] + 1,
                                       seed=self.seed_generator)
        coin = keras.random.uniform((batch, 1, 1, 1), 0, 1, dtype=self.compute_dtype,
                                    seed=self.seed_generator)
        return ops.where(coin < self.jpeg, jpeg_codec(images, quality), images)

    def cut_out(self, images):
        """Cutout (DeVries and Taylor, 2017): one square per image, ``cutout`` of the side,
        centred anywhere (so it may be clipped at the border), filled with the image's mean
        colour so that it hides rather than adds an edge. Drawn after the affine part, so
        runs without cutout keep every random draw they had before it existed."""
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        dtype = self.compute_dtype
        centres = keras.random.uniform((2, batch), 0, 1, dtype=dtype, seed=self.seed_generator)
        side_rows, side_cols = ops.cast(height, dtype), ops.cast(width, dtype)
        rows = ops.arange(height, dtype=dtype)[None, :] + 0.5
        cols = ops.arange(width, dtype=dtype)[None, :] + 0.5
        in_rows = ops.abs(rows - centres[0][:, None] * side_rows) < self.cutout * side_rows / 2
        in_cols = ops.abs(cols - centres[1][:, None] * side_cols) < self.cutout * side_cols / 2
        inside = ops.logical_and(in_rows[:, :, None, None], in_cols[:, None, :, None])
        return ops.where(inside, ops.mean(images, axis=(1, 2), keepdims=True), images)

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
        moves = {}
        if self.rotate_degrees or self.shift:
            turn = math.radians(self.rotate_degrees)
            moves["rotation"] = keras.random.uniform(
                (batch,), -turn, turn, dtype=dtype, seed=self.seed_generator
            )
            shifts = keras.random.uniform(
                (2, batch), -self.shift, self.shift, dtype=dtype, seed=self.seed_generator
            )
            moves["shift_rows"] = shifts[0] * ops.cast(height, dtype)
            moves["shift_cols"] = shifts[1] * ops.cast(width, dtype)
        if self.scale:  # both axes alike, as in a looser or tighter crop of the same face
            reach = math.log1p(self.scale)
            factor = ops.exp(keras.random.uniform(
                (batch,), -reach, reach, dtype=dtype, seed=self.seed_generator
            ))
            zoom_rows, zoom_cols = zoom_rows * factor, zoom_cols * factor
        return affine_rows(shear, zoom_rows, zoom_cols, sign, height, width, **moves)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            shear_degrees=self.shear_degrees,
            zoom=self.zoom,
            flip=self.flip,
            rotate_degrees=self.rotate_degrees,
            shift=self.shift,
            cutout=self.cutout,
            seed=self.seed,
            scale=self.scale,
            grayscale=self.grayscale,
            brightness=self.brightness,
            contrast=self.contrast,
            saturation=self.saturation,
            blur=self.blur,
            jpeg=self.jpeg,
        )
        return config


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def luma(images):
    """The gray level of each pixel, ``(..., 1)``: what a black-and-white film records."""
    weights = ops.convert_to_tensor(LUMA, dtype=images.dtype)
    return ops.sum(images * weights, axis=-1, keepdims=True)


class ColourMap:
    """A per-image affine map of pixel colours, ``colour @ matrix + offset`` (shapes
    ``(n, 3, 3)`` and ``(n, 3)``, colours as row vectors): brightness, contrast,
    saturation and grayscale are each one, so any sequence of them is one too."""

    def __init__(self, matrix, offset) -> None:
        self.matrix, self.offset = matrix, offset

    @classmethod
    def identity(cls, batch, dtype) -> ColourMap:
        return cls(ops.tile(ops.eye(3, dtype=dtype)[None], (batch, 1, 1)),
                   ops.zeros((batch, 3), dtype=dtype))

    def then(self, matrix, offset=None) -> ColourMap:
        """This map followed by ``colour @ matrix + offset``."""
        offset_now = ops.einsum("nc,ncd->nd", self.offset, matrix)
        return ColourMap(
            ops.matmul(self.matrix, matrix),
            offset_now if offset is None else offset_now + offset,
        )

    def apply_to_colours(self, colours):
        """The map of colours of shape ``(n, 3)``, one per image."""
        return ops.einsum("nc,ncd->nd", colours, self.matrix) + self.offset

    def apply_to_images(self, images):
        return ops.einsum("nhwc,ncd->nhwd", images, self.matrix) + self.offset[:, None, None, :]


BLUR_RADIUS = 3  # taps on each side: covers a sigma of up to about 1.5 pixels


def gaussian_blur(images, sigma):
    """Separable Gaussian blur of each image by its own ``sigma`` (pixels, shape (n,)),
    edges reflected; a sigma near 0 leaves the image as it is.

    The images' channels are laid side by side as the channels of one image, so that
    two depthwise convolutions (rows, then columns) give each image its own kernel."""
    taps = ops.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=images.dtype)
    weights = ops.exp(-(taps[None, :] ** 2) / (2 * sigma[:, None] ** 2 + 1e-6))
    weights = weights / ops.sum(weights, axis=1, keepdims=True)
    _, height, width, channels = ops.shape(images)
    pad = BLUR_RADIUS
    padded = ops.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect")
    side_by_side = ops.reshape(ops.transpose(padded, (1, 2, 0, 3)),
                               (1, height + 2 * pad, width + 2 * pad, -1))
    kernel = ops.repeat(ops.transpose(weights), channels, axis=1)  # (taps, images x channels)
    blurred = ops.depthwise_conv(side_by_side, kernel[:, None, :, None], padding="valid")
    blurred = ops.depthwise_conv(blurred, kernel[None, :, :, None], padding="valid")
    return ops.transpose(ops.reshape(blurred, (height, width, -1, channels)), (2, 0, 1, 3))


def jpeg_codec(images, quality):
    """Each image (0-255, any float dtype) encoded as JPEG at its own ``quality`` (shape
    (n,)) and decoded again, by libjpeg through ``tf.image``: the codec PIL uses too, so
    training sees the same artefacts as the JPEG probe. Keras has no JPEG op of its own,
    so this one change needs the TensorFlow backend."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "augment_jpeg: JPEG augmentation needs Keras' TensorFlow backend, "
            f"not {keras.backend.backend()!r}"
        )
    import tensorflow as tf

    pixels = tf.cast(tf.round(images), tf.uint8)
    saved = tf.map_fn(
        lambda image_quality: tf.image.adjust_jpeg_quality(*image_quality),
        (pixels, tf.cast(quality, tf.int32)),
        fn_output_signature=tf.uint8,
    )
    return tf.cast(saved, images.dtype)


def affine_rows(
    shear,
    zoom_rows,
    zoom_cols,
    sign,
    height,
    width,
    *,
    rotation=None,
    shift_rows=None,
    shift_cols=None,
):
    """Transform rows for ``affine_transform`` from per-image parameters (tensors of shape (n,)).

    ``shear`` and ``rotation`` are in radians, ``sign`` is -1 for a horizontal flip and +1
    otherwise, shifts are in pixels. Keras 2 works in (row, col):
    input = R S Z (output - c) + t + c, with R the rotation, S = [[1, -sin], [0, cos]]
    the shear, Z = diag(zoom_rows, zoom_cols) and c the pixel centre ((n - 1) / 2), so
    M = R S Z = [[cos(r) zr, -sin(r + s) zc], [sin(r) zr, cos(r + s) zc]].
    In (x=col, y=row): x_in = M11 x' + M10 y', y_in = M01 x' + M00 y', where
    x' = sign*(x - cx) does the flip, which Keras 2 applied after the transform.
    """
    dtype = shear.dtype
    rotation = ops.zeros_like(shear) if rotation is None else rotation
    cx = (ops.cast(width, dtype) - 1.0) / 2.0
    cy = (ops.cast(height, dtype) - 1.0) / 2.0
    m00 = ops.cos(rotation) * zoom_rows
    m01 = -ops.sin(rotation + shear) * zoom_cols
    m10 = ops.sin(rotation) * zoom_rows
    m11 = ops.cos(rotation + shear) * zoom_cols
    a0, a1 = m11 * sign, m10
    b0, b1 = m01 * sign, m00
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    if shift_cols is not None:
        a2 = a2 + shift_cols
    if shift_rows is not None:
        b2 = b2 + shift_rows
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


# Models saved before the layer got its present name still load.
keras.saving.get_custom_objects()["agegap>BlogAugmentation"] = RandomAugmentation
