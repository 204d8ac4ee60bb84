"""``train`` stage: the CNN trained on ``data/split/train``; the epoch best on validation is kept.

``train_run.json`` records how the run went (speed, precision, machine): not a metric, as it varies.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import keras

from agegap import workspace_lock
from agegap.atomic import atomic_path, write_json
from agegap.dataset import load_split
from agegap.ensemble import train_ensemble
from agegap.errors import exits_cleanly
from agegap.layout import MODEL_PATH, TRAIN_METRICS, TRAIN_RUN
from agegap.orphans import stop_when_runner_dies
from agegap.params import Params, load_params
from agegap.runtime import configure
from agegap.training import DVCLiveMetrics, train_model

DVCLIVE_DIR = Path("dvclive")
TENSORBOARD_DIR = Path("logs")


def train(
    params: Params, root: Path = Path("."), *, verbose: int = 2, dvclive: bool = True
) -> dict[str, Any]:
    """Train on ``root/data/split`` and write the model, metrics and logs under ``root``.

    ``dvclive=False`` skips the curves, and so the import of DVC, which a machine that
    only trains (a JAX-only GPU box without DVC) may not have; the
    model and ``train_metrics.json`` do not depend on it.
    """
    settings = configure(params)
    train_set = load_split("train", params.image_size, root)
    validation_set = load_split("validation", params.image_size, root)
    print(
        f"train: {len(train_set)} training and {len(validation_set)} validation images; "
        f"backend {settings['backend']} on {settings['device']}, {settings['precision']}",
        file=sys.stderr,
    )
    shutil.rmtree(root / TENSORBOARD_DIR, ignore_errors=True)
    with atomic_path(root / MODEL_PATH) as staged_model, contextlib.ExitStack() as stack:
        callbacks: list[keras.callbacks.Callback] = []
        if dvclive:
            from dvclive import Live

            live = stack.enter_context(
                Live(dir=str(root / DVCLIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None)
            )
            callbacks.append(DVCLiveMetrics(live))
        else:  # curves of an earlier run would not belong to this model
            shutil.rmtree(root / DVCLIVE_DIR, ignore_errors=True)
        if importlib.util.find_spec("tensorflow") is not None:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(root / TENSORBOARD_DIR)))
        trainer = train_ensemble if params.ensemble_size > 1 else train_model
        result = trainer(
            params,
            train_set,
            validation_set,
            staged_model,
            callbacks,
            verbose=verbose,
        )
    metrics = result.metrics()
    run = {**result.timings(), **settings}
    write_json(root / TRAIN_RUN, run)
    write_json(root / TRAIN_METRICS, metrics)
    return {**metrics, **run}


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--no-dvclive", action="store_true",
        help=f"write no {DVCLIVE_DIR}/ curves (no DVC needed); the model is the same",
    )
    args = parser.parse_args(argv)
    stop_when_runner_dies("train")  # a killed `dvc repro` takes its training with it
    workspace_lock.hold("train")  # one training at a time writes this workspace's outputs
    metrics = train(load_params(), dvclive=not args.no_dvclive)
    print(
        f"train: best epoch {metrics['best_epoch']}/{metrics['epochs']}, "
        f"val_accuracy {metrics['best_val_accuracy']:.4f}, "
        f"{metrics['seconds_per_epoch']:.2f} s/epoch -> {MODEL_PATH}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
