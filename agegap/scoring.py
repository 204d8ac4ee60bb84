"""Scores of a model on labelled images: one implementation for ``evaluate`` and ``agegap score``.

Positive class is ``young`` (label 1), the sigmoid's output, as in the blog.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
from sklearn import metrics as skm

from agegap import CLASS_NAMES, DECISION_THRESHOLD

PREDICT_BATCH = 256
_EPSILON = 1e-7  # Keras' clip for binary cross-entropy


@dataclass(frozen=True)
class Scores:
    """Threshold-0.5 classification scores and the threshold-free ROC AUC."""

    accuracy: float
    loss: float
    precision: float
    recall: float
    f1: float
    roc_auc: float
    n_images: int
    confusion: list[list[int]]  # rows: true old/young, columns: predicted old/young

    def as_dict(self) -> dict:
        return asdict(self)


def predict_probabilities(
    model: keras.Model, images: np.ndarray, *, tta_flip: bool = False
) -> np.ndarray:
    """P(young) for each uint8 image, batched; shape ``(n,)``.

    With ``tta_flip`` each image's score is averaged with its mirror image's: a face
    is no younger seen in a mirror, and the average is steadier than either.
    """
    if len(images) == 0:
        return np.zeros((0,), np.float32)
    output = model.predict(images, batch_size=PREDICT_BATCH, verbose=0)
    probabilities = np.asarray(output, dtype=np.float64).reshape(-1)
    if tta_flip:
        mirrored = model.predict(images[:, :, ::-1, :], batch_size=PREDICT_BATCH, verbose=0)
        probabilities = (probabilities + np.asarray(mirrored, np.float64).reshape(-1)) / 2
    return probabilities


def score_predictions(labels: np.ndarray, probabilities: np.ndarray) -> Scores:
    """Scores from true labels (1 = young) and predicted P(young)."""
    labels = np.asarray(labels).astype(int).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    predicted = (probabilities >= DECISION_THRESHOLD).astype(int)
    clipped = np.clip(probabilities, _EPSILON, 1 - _EPSILON)
    loss = -np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    both_classes = len(np.unique(labels)) == 2
    return Scores(
        accuracy=float(skm.accuracy_score(labels, predicted)),
        loss=float(loss),
        precision=float(skm.precision_score(labels, predicted, zero_division=0)),
        recall=float(skm.recall_score(labels, predicted, zero_division=0)),
        f1=float(skm.f1_score(labels, predicted, zero_division=0)),
        roc_auc=float(skm.roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        n_images=len(labels),
        confusion=skm.confusion_matrix(labels, predicted, labels=[0, 1]).tolist(),
    )


def label_names(indices: np.ndarray) -> list[str]:
    """``old`` / ``young`` for 0 / 1."""
    return [CLASS_NAMES[int(i)] for i in indices]
