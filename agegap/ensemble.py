"""An ensemble: k networks trained apart, their probabilities averaged in one saved model.

Member ``i`` trains with seed ``seed + i`` (its own initial weights, augmentation and
batch order) and keeps its own best epoch. The saved model takes the image and returns
the mean of the members' P(young), so ``evaluate``, ``agegap score``, ``agegap predict``
and the server load and use it as they load one network.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np

from agegap.dataset import ImageSet
from agegap.model import load_trained_model
from agegap.params import Params
from agegap.scoring import predict_probabilities, score_predictions
from agegap.training import TrainingResult, train_model


def member_params(params: Params, index: int) -> Params:
    """The params member ``index`` trains with: the ensemble's, seeded ``seed + index``."""
    return params.model_copy(update={"seed": params.seed + index, "ensemble_size": 1})


def averaged(members: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of the members' outputs on the same image."""
    image = keras.Input(shape=members[0].inputs[0].shape[1:], dtype="uint8", name="image")
    renamed = [
        keras.Model(member.inputs[0], member.outputs[0], name=f"member{index}")
        for index, member in enumerate(members)
    ]
    mean = keras.layers.Average(name="p_young_mean", dtype="float32")(
        [member(image) for member in renamed]
    )
    return keras.Model(image, mean, name="agegap_ensemble")


def train_ensemble(
    params: Params,
    train: ImageSet,
    validation: ImageSet,
    model_path: Path,
    callbacks: list[keras.callbacks.Callback] | None = None,
    *,
    verbose: int = 2,
) -> TrainingResult:
    """Train ``params.ensemble_size`` members and save their average at ``model_path``.

    ``callbacks`` (DVCLive's curves, TensorBoard) follow the first member. The result's
    validation scores are the ensemble's; its epochs, train scores and timings are the
    members' means.
    """
    results: list[TrainingResult] = []
    members: list[keras.Model] = []
    with tempfile.TemporaryDirectory(prefix=".members-", dir=model_path.parent) as folder:
        for index in range(params.ensemble_size):
            path = Path(folder) / f"member{index}.keras"
            results.append(train_model(
                member_params(params, index), train, validation, path,
                callbacks if index == 0 else None, verbose=verbose,
            ))
            members.append(load_trained_model(path))
        model = averaged(members)
        model.save(model_path)
    scores = score_predictions(validation.labels, predict_probabilities(model, validation.images))

    def mean(field: str) -> float:
        return float(np.mean([getattr(result, field) for result in results]))

    first = results[0]
    return TrainingResult(
        best_epoch=round(mean("best_epoch")),
        best_val_accuracy=scores.accuracy,
        best_val_loss=scores.loss,
        train_accuracy_at_best=mean("train_accuracy_at_best"),
        train_loss_at_best=mean("train_loss_at_best"),
        epochs=params.epochs,
        epochs_run=round(mean("epochs_run")),
        steps_per_epoch=first.steps_per_epoch,
        seconds_per_epoch=mean("seconds_per_epoch"),
        train_images_per_second=mean("train_images_per_second"),
        history=first.history,
    )
