"""The blog's convolutional network, built from the flat hyperparameters.

The input is the raw uint8 image: augmentation and rescaling live inside the saved model.
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import keras
from keras import layers, ops

from agegap.augment import RandomAugmentation, luma
from agegap.batch_norm import FusedBatchNormalization
from agegap.errors import AgegapError
from agegap.params import Params


@keras.saving.register_keras_serializable(package="agegap")
class Grayscale(keras.layers.Layer):
    """Every image as black and white (its luma in all three channels), in training and
    in use: a network that never sees colour cannot judge a photograph by its film."""

    def call(self, images):
        return ops.repeat(luma(images), 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def _activation(params: Params, name: str) -> keras.layers.Layer:
    if params.activation == "prelu":
        # One slope per channel, shared across space: unshared, the first PReLU alone
        # would add 100*100*32 = 320,000 weights.
        return layers.PReLU(shared_axes=[1, 2], name=name)
    if params.activation == "leaky_relu":
        return layers.LeakyReLU(negative_slope=params.leaky_relu_slope, name=name)
    return layers.ReLU(name=name)


def _weight_seeds(params: Params) -> random.Random:
    """A private generator for the layers' initial weights, seeded from ``params.seed``.

    Keras draws an unseeded initializer's seed from Python's global ``random`` when the
    layer is built, so any other code that touches ``random`` in between (a library's
    background thread, say) would change the starting weights. This generator gives the
    same draws ``keras.utils.set_random_seed(params.seed)`` gave, without sharing them.
    """
    return random.Random(params.seed)


def _glorot(seeds: random.Random) -> keras.initializers.Initializer:
    return keras.initializers.GlorotUniform(seed=seeds.randint(1, int(1e9)))


def build_model(params: Params) -> keras.Model:
    """The network for ``params``, uncompiled; its input is ``(size, size, 3)`` uint8."""
    size = params.image_size
    seeds = _weight_seeds(params)
    inputs = keras.Input(shape=(size, size, 3), dtype="uint8", name="image")
    x = RandomAugmentation(
        shear_degrees=params.augment_shear_degrees,
        zoom=params.augment_zoom,
        flip=params.augment_flip,
        rotate_degrees=params.augment_rotate_degrees,
        shift=params.augment_shift,
        cutout=params.augment_cutout,
        seed=params.seed,
        scale=params.augment_scale,
        grayscale=params.augment_grayscale,
        brightness=params.augment_brightness,
        contrast=params.augment_contrast,
        saturation=params.augment_saturation,
        blur=params.augment_blur,
        jpeg=params.augment_jpeg,
        name="augmentation",
    )(inputs)
    if params.input_grayscale:
        x = Grayscale(name="grayscale")(x)
    x = layers.Rescaling(1.0 / 255, name="rescaling")(x)
    if params.architecture == "residual":
        x = _residual_blocks(x, params, seeds)
    else:
        x = _blog_blocks(x, params, seeds)
    x = layers.Dense(params.dense_units, kernel_initializer=_glorot(seeds), name="dense")(x)
    x = layers.ReLU(name="dense_relu")(x)
    x = layers.Dropout(params.dropout, seed=params.seed, name="dropout")(x)
    # float32 output: a sigmoid and a log-loss in bfloat16 lose too many digits.
    outputs = layers.Dense(
        1, activation="sigmoid", kernel_initializer=_glorot(seeds), dtype="float32",
        name="p_young",
    )(x)
    return keras.Model(inputs, outputs, name="agegap_cnn")


def _blog_blocks(x: keras.KerasTensor, params: Params, seeds: random.Random) -> keras.KerasTensor:
    """The blog's body: Conv-activation-MaxPool per ``conv_filters`` entry, flattened."""
    for block, filters in enumerate(params.conv_filters, start=1):
        x = _convolution(x, filters, params.kernel_size, params, seeds, f"conv{block}")
        activation = _activation(params, f"conv{block}_{params.activation}")
        pool = layers.MaxPooling2D(2, name=f"pool{block}")
        x = pool(activation(x)) if params.activation == "prelu" else activation(pool(x))
    return layers.Flatten(name="flatten")(x)


def _residual_blocks(
    x: keras.KerasTensor, params: Params, seeds: random.Random
) -> keras.KerasTensor:
    """A residual body: per ``conv_filters`` entry two convolutions with a shortcut around
    them (a 1x1 convolution where the width changes), the activation, max pooling; then
    global average pooling, which has no weights to overfit where Flatten feeds
    thousands into the dense layer."""
    for block, filters in enumerate(params.conv_filters, start=1):
        name = f"res{block}"
        shortcut = x
        if x.shape[-1] != filters:
            shortcut = _convolution(x, filters, 1, params, seeds, f"{name}_shortcut")
        y = _convolution(x, filters, params.kernel_size, params, seeds, f"{name}_conv1")
        y = _activation(params, f"{name}_conv1_{params.activation}")(y)
        y = _convolution(y, filters, params.kernel_size, params, seeds, f"{name}_conv2")
        x = layers.Add(name=f"{name}_add")([shortcut, y])
        x = _activation(params, f"{name}_{params.activation}")(x)
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    return layers.GlobalAveragePooling2D(name="global_average")(x)


def _convolution(
    x: keras.KerasTensor, filters: int, kernel: int, params: Params, seeds: random.Random,
    name: str,
) -> keras.KerasTensor:
    """A convolution, batch-normalised where ``batch_norm`` asks (its offset then replaces
    the bias)."""
    x = layers.Conv2D(
        filters, kernel, padding=params.padding, use_bias=not params.batch_norm,
        kernel_initializer=_glorot(seeds), name=name,
    )(x)
    return FusedBatchNormalization(name=f"{name}_bn")(x) if params.batch_norm else x


def make_optimizer(params: Params, total_steps: int = 1) -> keras.optimizers.Optimizer:
    """The named optimizer at ``learning_rate`` (Keras' defaults otherwise, as the blog),
    with cosine decay over ``total_steps``, decoupled weight decay and a moving average
    of the weights where asked."""
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = params.learning_rate
    if params.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            params.learning_rate, decay_steps=max(1, total_steps)
        )
    optimizers = {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
    }
    return optimizers[params.optimizer](
        learning_rate=learning_rate,
        weight_decay=params.weight_decay or None,
        use_ema=params.weight_ema > 0,
        ema_momentum=params.weight_ema or 0.99,
    )


def load_trained_model(path: Path | str) -> keras.Model:
    """Load a ``.keras`` file written by the train stage, with a one-line error if it can't."""
    path = Path(path)
    if not path.is_file():
        raise AgegapError(f"{path}: no such model file; run `dvc repro train` first")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found", which misleads
        raise AgegapError(f"{path}: not a loadable Keras model (not a .keras zip archive)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a damaged file
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise AgegapError(f"{path}: not a loadable Keras model ({reason})") from None
