"""``evaluate`` stage: the kept model on the test split, clean and under the robustness probes.

Writes ``metrics.json`` and, under ``plots/evaluate/``, the data of the plots (in git)
and pictures of test faces (DVC-cached only: the LAG licence forbids redistribution).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn import metrics as skm

from agegap import DECISION_THRESHOLD
from agegap.atomic import atomic_dir, atomic_path, finite, json_text, naming
from agegap.dataset import ImageSet, load_split
from agegap.errors import AgegapError, exits_cleanly
from agegap.layout import METRICS, MODEL_PATH, TRAIN_METRICS
from agegap.model import load_trained_model
from agegap.params import Params, load_params
from agegap.probes import PROBES, apply_probe, robustness
from agegap.scoring import label_names, predict_probabilities, score_predictions

PLOTS_DIR = Path("plots/evaluate")
GALLERY_MAX = 40
PROBE_EXAMPLES = 3  # test faces of each class shown under every probe


def evaluate(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    """Score ``models/model.keras`` on the test split; write metrics and plots."""
    model = load_trained_model(root / MODEL_PATH)
    test = load_split("test", params.image_size, root)
    probabilities = predict_probabilities(model, test.images, tta_flip=params.tta_flip)
    scores = score_predictions(test.labels, probabilities)
    metrics: dict[str, Any] = {
        "accuracy": scores.accuracy,
        "loss": scores.loss,
        "precision": scores.precision,
        "recall": scores.recall,
        "f1": scores.f1,
        "roc_auc": scores.roc_auc,
        "n_test": scores.n_images,
        "best_epoch": _best_epoch(root),
    }
    probed, probe_probabilities = robustness(
        model, test.images, test.labels, tta_flip=params.tta_flip,
        clean_probabilities=probabilities,
    )
    metrics.update(probed.metrics())
    metrics = finite(metrics)  # an undefined score is null in JSON, never NaN
    # metrics.json is staged before the plots and renamed into place after them, so a full
    # disk or an error in either leaves both as they were: never new plots beside old
    # metrics.
    with atomic_path(root / METRICS) as staged_metrics:
        staged_metrics.write_text(json_text(metrics, allow_nan=False), encoding="utf-8")
        with atomic_dir(root / PLOTS_DIR) as staging:
            tables = {**_curves(test, probabilities), "probes.csv": _probes(metrics)}
            for name, table in tables.items():
                with naming(staging / name):
                    table.to_csv(staging / name, index=False)
            with naming(staging / "misclassified.png"):
                _gallery(test, probabilities, staging / "misclassified.png")
            with naming(staging / "probe_examples.png"):
                _probe_examples(test, probe_probabilities, staging / "probe_examples.png")
    return metrics


def _best_epoch(root: Path) -> int | None:
    path = root / TRAIN_METRICS
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["best_epoch"])
    except (ValueError, KeyError, TypeError):
        raise AgegapError(f"{path}: no best_epoch in it; re-run the train stage") from None


def _curves(test: ImageSet, probabilities: np.ndarray) -> dict[str, pd.DataFrame]:
    """The confusion, ROC and precision-recall plots' data, by file name."""
    labels = test.labels.astype(int)
    predicted = (probabilities >= DECISION_THRESHOLD).astype(int)
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = skm.roc_curve(labels, probabilities)
        precision, recall, _ = skm.precision_recall_curve(labels, probabilities)
    else:  # a one-class test set has no curve; keep the files so DVC's outputs exist
        fpr, tpr, precision, recall = [np.array([])] * 4
    return {
        "confusion.csv": pd.DataFrame(
            {"actual": label_names(labels), "predicted": label_names(predicted)}
        ),
        "roc.csv": pd.DataFrame({"fpr": fpr, "tpr": tpr}),
        "precision_recall.csv": pd.DataFrame({"recall": recall, "precision": precision}),
    }


def _gallery(test: ImageSet, probabilities: np.ndarray, target: Path) -> None:
    """The misclassified test faces, worst first, titled with truth and P(young)."""
    labels = test.labels.astype(int)
    wrong = np.flatnonzero((probabilities >= DECISION_THRESHOLD).astype(int) != labels)
    confidence = np.abs(probabilities[wrong] - DECISION_THRESHOLD)
    wrong = wrong[np.argsort(-confidence, kind="stable")][:GALLERY_MAX]
    columns = 8
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, index in zip(axes.flat, wrong, strict=False):
        axis.imshow(test.images[index])
        axis.set_title(
            f"true {label_names([labels[index]])[0]}\nP(young)={probabilities[index]:.2f}",
            fontsize=8,
        )
    if not len(wrong):
        axes[0][0].set_title("no misclassified test image", fontsize=9)
    figure.suptitle(f"{len(wrong)} misclassified test images (most confident first)")
    figure.tight_layout()
    figure.savefig(target, dpi=70)
    plt.close(figure)


def _probes(metrics: dict[str, Any]) -> pd.DataFrame:
    """Accuracy per probe, clean first: the data of the bar plot in dvc.yaml."""
    rows = [("clean", metrics["accuracy"]), *metrics["probes"].items()]
    return pd.DataFrame(rows, columns=["probe", "accuracy"])


def _probe_examples(
    test: ImageSet, probabilities: dict[str, np.ndarray], target: Path
) -> None:
    """A few test faces of each class, clean and under every probe, titled with P(young)."""
    labels = test.labels.astype(int)
    chosen = np.concatenate(
        [np.flatnonzero(labels == label)[:PROBE_EXAMPLES] for label in (0, 1)]
    )
    columns = ["clean", *PROBES]
    figure, axes = plt.subplots(
        len(chosen), len(columns), figsize=(len(columns) * 1.3, len(chosen) * 1.5),
        squeeze=False,
    )
    for column, name in enumerate(columns):
        images = test.images[chosen]
        shown = images if name == "clean" else apply_probe(name, images)
        for row, index in enumerate(chosen):
            axis = axes[row][column]
            axis.imshow(shown[row])
            axis.set_xticks([])
            axis.set_yticks([])
            p_young = probabilities[name][index]
            right = (p_young >= DECISION_THRESHOLD) == labels[index]
            title = f"{name}\n{p_young:.2f}" if row == 0 else f"{p_young:.2f}"
            axis.set_title(title, fontsize=7, color="black" if right else "red")
            if column == 0:
                axis.set_ylabel(f"true {label_names([labels[index]])[0]}", fontsize=7)
    figure.suptitle("P(young) of test faces under each probe (red: wrong)", fontsize=9)
    figure.tight_layout()
    figure.savefig(target, dpi=70)
    plt.close(figure)


@exits_cleanly
def main() -> None:
    metrics = evaluate(load_params())
    print(
        f"evaluate: test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
        f"ROC AUC {metrics['roc_auc'] or float('nan'):.4f} on {metrics['n_test']} images; "
        f"worst probe {metrics['robustness']['worst_probe']} "
        f"{metrics['robustness']['worst_probe_accuracy']:.4f} -> {METRICS}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
