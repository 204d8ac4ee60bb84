"""Batch normalisation that trains on TensorFlow's fused kernel.

Keras 3 normalises a batch with separate operations (the moments, then the normalisation,
each a pass over the activations in float32, and as many again for the gradient).
TensorFlow's fused kernel computes the same function in one pass each way, which on a
CPU makes the batch-normalised recipes' training steps much cheaper (docs/performance.md).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="agegap")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step uses TensorFlow's fused
    kernel: the same outputs, gradients and moving statistics up to rounding.

    Everything else is Keras' own: inference, other backends (XLA fuses the separate
    operations itself), masks, renormalisation and any axis but the channels of a
    4-D batch.
    """

    def call(self, inputs, training=None, mask=None):
        if not self._fits_fused_kernel(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma.value, self.beta.value, epsilon=self.epsilon, is_training=True
        )
        # The kernel returns the unbiased variance (for inference); Keras averages the
        # biased one, the variance the batch was normalised with.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), variance.dtype)
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(
            self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return tf.cast(outputs, self.compute_dtype)

    def _fits_fused_kernel(self, inputs, training, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and bool(training)
            and self.trainable
            and mask is None
            and not self.renorm
            and self.scale
            and self.center
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )
