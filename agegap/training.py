"""One training run: ``fit`` with the blog's best-epoch checkpoint, logged by DVCLive."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from agegap.dataset import ImageSet, training_stream
from agegap.errors import AgegapError
from agegap.model import build_model, make_optimizer
from agegap.params import Params

MONITOR = "val_accuracy"
VALIDATION_BATCH = 256
# Training steps run per call into the compiled train function. Each call costs a
# Python -> backend round trip, callbacks and a metrics sync (about a tenth of a
# batch-16 step's CPU time on a 2-core CPU, far more next to a fast GPU); steps_per_execution
# only changes how often control returns to Python, not what is computed, so the
# history is identical (tests/test_training.py checks it).
MAX_STEPS_PER_EXECUTION = 25


@dataclass
class TrainingResult:
    """What the run did: the best epoch, its scores, and how fast it went."""

    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    train_accuracy_at_best: float
    train_loss_at_best: float
    epochs: int
    epochs_run: int
    steps_per_epoch: int
    seconds_per_epoch: float
    train_images_per_second: float
    history: dict[str, list[float]] = field(repr=False)

    def metrics(self) -> dict[str, Any]:
        """What the model learnt, for ``train_metrics.json``: the same on every rerun."""
        return {k: v for k, v in asdict(self).items() if k not in _RUN_FIELDS}

    def timings(self) -> dict[str, Any]:
        """How fast it went: differs from run to run, so never a DVC metric."""
        return {k: getattr(self, k) for k in _RUN_FIELDS if k != "history"}


_RUN_FIELDS = ("steps_per_epoch", "seconds_per_epoch", "train_images_per_second", "history")


class EpochTimer(keras.callbacks.Callback):
    """Time of each epoch's training part and of the whole epoch, by ``clock`` (wall time)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.clock = clock
        self.train_seconds: list[float] = []
        self.epoch_seconds: list[float] = []
        self._epoch_start = 0.0
        self._train_end = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = self.clock()
        self._train_end = 0.0

    def on_test_begin(self, logs: dict | None = None) -> None:
        if not self._train_end:
            self._train_end = self.clock()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = self.clock()
        self.train_seconds.append((self._train_end or now) - self._epoch_start)
        self.epoch_seconds.append(now - self._epoch_start)


class _CheckMonitor(keras.callbacks.Callback):
    """Fail at the first epoch if ``MONITOR`` is not among the logged metrics."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == 0 and MONITOR not in (logs or {}):
            raise AgegapError(
                f"checkpoint monitor {MONITOR!r} is not a logged metric "
                f"(logged: {sorted(logs or {})}); the best epoch cannot be kept"
            )


class DVCLiveMetrics(keras.callbacks.Callback):
    """DVCLive's Keras callback, minus its ``import tensorflow``.

    ``dvclive.keras.DVCLiveCallback`` subclasses ``tf.keras.callbacks.Callback``, which
    does not exist under ``KERAS_BACKEND=jax`` on a machine without TensorFlow; this
    logs the same ``train/<metric>`` and ``eval/<metric>`` series through ``Live``.
    """

    def __init__(self, live: Any) -> None:
        super().__init__()
        self.live = live

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name, value in sorted((logs or {}).items()):
            if name == "learning_rate":
                continue
            split, metric = ("eval", name[4:]) if name.startswith("val_") else ("train", name)
            self.live.log_metric(f"{split}/{metric}", float(value))
        self.live.next_step()


@keras.saving.register_keras_serializable(package="agegap")
def majority_label_accuracy(y_true, y_pred):
    """Keras' binary accuracy against the label's larger side (``y_true > 0.5``).

    Keras compares ``y_true`` itself with the thresholded prediction, so under mixup,
    whose labels are fractions, almost no training image would count as right. On 0/1
    labels (validation, test, runs without mixup) the two are the same number.
    """
    larger_side = keras.ops.cast(keras.ops.greater(y_true, 0.5), "float32")
    return keras.metrics.binary_accuracy(larger_side, y_pred)


def steps_per_epoch(params: Params, train_size: int) -> int:
    """Batches per epoch: ``train_images_per_epoch`` images (0 = the whole split)."""
    images = params.train_images_per_epoch or train_size
    return max(1, math.ceil(images / params.batch_size))


def steps_per_execution(steps: int, limit: int = MAX_STEPS_PER_EXECUTION) -> int:
    """The largest divisor of ``steps`` up to ``limit``.

    A divisor, because Keras runs whole executions: with 75 steps per epoch and 20 per
    execution the fourth execution would run 5 steps into the next epoch's batches.
    """
    return max(d for d in range(1, min(steps, limit) + 1) if steps % d == 0)


def compiled_model(
    params: Params,
    steps: int,
    *,
    jit_compile: bool | str = "auto",
    execution_steps: int | None = None,
) -> keras.Model:
    """A fresh network for ``params``, compiled as every training run compiles it, for
    ``steps`` batches per epoch: the benchmark times this very model without the pipeline."""
    model = build_model(params)
    model.compile(
        optimizer=make_optimizer(params, total_steps=steps * params.epochs),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=params.label_smoothing),
        metrics=[keras.metrics.MeanMetricWrapper(majority_label_accuracy, name="accuracy")],
        jit_compile=jit_compile,
        steps_per_execution=execution_steps or steps_per_execution(steps),
    )
    return model


def train_model(
    params: Params,
    train: ImageSet,
    validation: ImageSet,
    model_path: Path,
    callbacks: list[keras.callbacks.Callback] | None = None,
    *,
    verbose: int = 2,
    jit_compile: bool | str = "auto",
    execution_steps: int | None = None,
) -> TrainingResult:
    """Train a fresh model; the best epoch's model is saved at ``model_path`` (.keras).

    ``execution_steps`` overrides :func:`steps_per_execution` (1 = Keras' default loop).
    ``jit_compile="auto"`` lets Keras decide: XLA on JAX; on TensorFlow, Keras leaves it
    off on a CPU and whenever op determinism is on (``ImageProjectiveTransformV3`` has no
    XLA kernel anyway), which is also the fast choice on a CPU: XLA's CPU backend does not use
    oneDNN (docs/performance.md).
    """
    steps = steps_per_epoch(params, len(train))
    model = compiled_model(params, steps, jit_compile=jit_compile, execution_steps=execution_steps)
    timer = EpochTimer()
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(model_path), monitor=MONITOR, mode="max", save_best_only=True, verbose=0
    )
    # With weight averaging, validation and the checkpoint see the averaged weights:
    # the callback swaps them in before each, so it must come before the checkpoint.
    averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if params.weight_ema else []
    stopping = (
        [
            keras.callbacks.EarlyStopping(
                monitor=MONITOR, mode="max", patience=params.early_stopping_patience
            )
        ]
        if params.early_stopping_patience
        else []
    )
    history = model.fit(
        training_stream(
            train, params.batch_size, params.seed, steps * params.epochs, params.mixup_alpha
        ),
        steps_per_epoch=steps,
        epochs=params.epochs,
        validation_data=(validation.images, validation.labels),
        validation_batch_size=VALIDATION_BATCH,
        callbacks=[_CheckMonitor(), *averaging, checkpoint, timer, *stopping, *(callbacks or [])],
        shuffle=False,  # the stream shuffles, reproducibly
        verbose=verbose,
    ).history
    scores = np.asarray(history[MONITOR])
    best = int(np.argmax(scores))  # the first of equal maxima, as save_best_only keeps
    later = timer.epoch_seconds[1:] or timer.epoch_seconds  # epoch 1 also compiles
    later_train = timer.train_seconds[1:] or timer.train_seconds
    return TrainingResult(
        best_epoch=best + 1,
        best_val_accuracy=float(scores[best]),
        best_val_loss=float(history["val_loss"][best]),
        train_accuracy_at_best=float(history["accuracy"][best]),
        train_loss_at_best=float(history["loss"][best]),
        epochs=params.epochs,
        epochs_run=len(scores),  # fewer where early stopping ended the run
        steps_per_epoch=steps,
        seconds_per_epoch=float(np.mean(later)),
        train_images_per_second=float(steps * params.batch_size / np.mean(later_train)),
        history={k: [float(v) for v in vs] for k, vs in history.items()},
    )
