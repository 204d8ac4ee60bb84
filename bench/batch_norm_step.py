"""Training step of a batch-normalised recipe: the project's fused batch normalisation
against Keras' own layer, side by side in one run.

    python bench/batch_norm_step.py
    python bench/batch_norm_step.py --row blog+batchnorm --rounds 5 --epochs 4

Each round trains a fresh model of the row, once per side, alternating, on random bytes
of the real images' shape (a step's cost does not depend on the faces), with the run
settings every training run uses (``configure``, ``compiled_model``). The first epoch
(tracing) is not timed. Prints images/s per side and round, the per-round ratios and
their median, and the machine. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_throughput import machine, random_split  # noqa: E402

SIDES = ("keras", "fused")
DEFAULT_ROW = "blog+batchnorm+cosine+fullepochs+cutout+gray+jitter+scale0.3+blur"


def row_params(row: str, epochs: int, images: int):
    """``row`` of the accuracy study, for ``epochs`` of ``images`` training images."""
    from agegap.errors import AgegapError
    from agegap.params import params_from_dict
    from flows.study_plan import load_study, study_path

    try:
        overrides = load_study(study_path(REPO, "accuracy")).row(row).overrides
    except AgegapError as error:
        raise SystemExit(f"error: {error}") from None
    if not overrides.get("batch_norm"):
        raise SystemExit(f"error: studies/accuracy.yaml: row '{row}' has no batch normalisation")
    return params_from_dict(
        {**overrides, "epochs": epochs, "train_images_per_epoch": images},
        source="studies/accuracy.yaml",
    )


def images_per_second(side: str, params, images: int) -> float:
    """The median training images/s of epochs 2 onwards, for a fresh model of ``params``
    whose batch normalisation is the project's (``fused``) or Keras' own (``keras``)."""
    import keras
    import tensorflow as tf

    import agegap.model
    from agegap.runtime import configure
    from agegap.training import EpochTimer, compiled_model

    configure(params)
    steps = images // params.batch_size
    arrays = random_split()
    # random_split orders its labels by class: pick across both, as a real epoch would.
    picked = np.random.default_rng(0).permutation(len(arrays["train_y"]))[:images]
    batches = (
        tf.data.Dataset.from_tensor_slices((arrays["train_x"][picked], arrays["train_y"][picked]))
        .batch(params.batch_size).cache().repeat().prefetch(2)
    )
    layer = agegap.model.FusedBatchNormalization
    if side == "keras":
        layer = keras.layers.BatchNormalization
    with mock.patch.object(agegap.model, "FusedBatchNormalization", layer):
        model = compiled_model(params, steps)
    timer = EpochTimer()
    model.fit(batches, steps_per_epoch=steps, epochs=params.epochs, callbacks=[timer],
              verbose=0)
    return statistics.median(steps * params.batch_size / s for s in timer.train_seconds[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", default=DEFAULT_ROW,
                        help="a batch-normalised row of studies/accuracy.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3,
                        help="per side and round, the first not timed")
    parser.add_argument("--images", type=int, default=800, help="training images per epoch")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first epoch traces and is not timed)")
    params = row_params(args.row, args.epochs, args.images)
    print("machine: " + "; ".join(f"{key}: {value}" for key, value in machine().items()))
    print(f"row: {args.row}; batch {params.batch_size}; {args.images} images per epoch; "
          f"median of epochs 2 to {args.epochs}")
    ratios = []
    for round_ in range(args.rounds):
        order = SIDES if round_ % 2 == 0 else SIDES[::-1]
        speed = {side: images_per_second(side, params, args.images) for side in order}
        ratios.append(speed["fused"] / speed["keras"])
        print(f"round {round_ + 1}: keras {speed['keras']:.1f} images/s, "
              f"fused {speed['fused']:.1f} images/s, ratio {ratios[-1]:.2f}")
    print(f"fused / keras: median {statistics.median(ratios):.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
