"""The fused batch normalisation computes what Keras' own layer computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from agegap.batch_norm import FusedBatchNormalization

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the fused kernel is TensorFlow's; other backends run Keras' own layer",
)
tf = pytest.importorskip("tensorflow")


def _training_step(layer_class: type, images: tf.Tensor) -> dict[str, np.ndarray]:
    """One training call of a fresh layer with set weights: its outputs, the gradients of
    a loss that weighs every output differently, and the moving statistics after it."""
    layer = layer_class()
    layer.build(images.shape)
    channels = images.shape[-1]
    layer.gamma.assign(np.linspace(0.5, 2.0, channels))
    layer.beta.assign(np.linspace(-1.0, 1.0, channels))
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = layer(images, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) ** 3)
    gradients = tape.gradient(loss, [images, layer.gamma.value, layer.beta.value])
    return {
        "outputs": np.asarray(tf.cast(outputs, tf.float32)),
        "input gradient": np.asarray(gradients[0]),
        "gamma gradient": np.asarray(gradients[1]),
        "beta gradient": np.asarray(gradients[2]),
        "moving mean": layer.moving_mean.numpy(),
        "moving variance": layer.moving_variance.numpy(),
        "inference": np.asarray(tf.cast(layer(images, training=False), tf.float32)),
    }


@pytest.mark.parametrize("policy, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 1e-2)])
def test_training_matches_keras_batch_normalization(
    restore_globals: None, policy: str, tolerance: float
) -> None:
    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(1.0, 3.0, (4, 10, 10, 8)).astype("float32"))
    fused = _training_step(FusedBatchNormalization, images)
    keras_own = _training_step(keras.layers.BatchNormalization, images)
    for name, value in keras_own.items():
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(fused[name], value, atol=tolerance * scale, err_msg=name)


def test_training_runs_the_fused_kernel_and_inference_does_not() -> None:
    layer = FusedBatchNormalization()
    images = tf.zeros((2, 6, 6, 4))
    layer.build(images.shape)

    def op_types(training: bool) -> set[str]:
        graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(
            tf.TensorSpec(images.shape)
        ).graph
        return {operation.type for operation in graph.get_operations()}

    assert "FusedBatchNormV3" in op_types(training=True)
    assert "FusedBatchNormV3" not in op_types(training=False)


def test_other_shapes_use_keras_own_path() -> None:
    """A dense layer's (batch, features) activations have no fused kernel."""
    features = tf.constant(np.random.default_rng(1).normal(size=(8, 5)).astype("float32"))
    fused, keras_own = FusedBatchNormalization(), keras.layers.BatchNormalization()
    np.testing.assert_allclose(
        fused(features, training=True), keras_own(features, training=True), rtol=1e-6
    )
