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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_step import (  # noqa: E402
    machine_line,
    parse_round_options,
    row_overrides,
    timed_params,
    training_speed,
)

SIDES = ("keras", "fused")


def row_params(row: str, epochs: int, images: int):
    """``row`` of the accuracy study, for ``epochs`` of ``images`` training images."""
    overrides = row_overrides(row)
    if not overrides.get("batch_norm"):
        raise SystemExit(f"error: studies/accuracy.yaml: row '{row}' has no batch normalisation")
    return timed_params(overrides, epochs, images)


def side_speed(side: str, params, images: int) -> float:
    """Images/s of ``params`` whose batch normalisation is the project's (``fused``) or
    Keras' own (``keras``)."""
    import keras

    import agegap.model

    layer = agegap.model.FusedBatchNormalization
    if side == "keras":
        layer = keras.layers.BatchNormalization
    with mock.patch.object(agegap.model, "FusedBatchNormalization", layer):
        return training_speed(params, images)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_round_options(parser, argv, "a batch-normalised row of studies/accuracy.yaml")
    params = row_params(args.row, args.epochs, args.images)
    print(machine_line())
    print(f"row: {args.row}; batch {params.batch_size}; {args.images} images per epoch; "
          f"median of epochs 2 to {args.epochs}")
    ratios = []
    for round_ in range(args.rounds):
        order = SIDES if round_ % 2 == 0 else SIDES[::-1]
        speed = {side: side_speed(side, params, args.images) for side in order}
        ratios.append(speed["fused"] / speed["keras"])
        print(f"round {round_ + 1}: keras {speed['keras']:.1f} images/s, "
              f"fused {speed['fused']:.1f} images/s, ratio {ratios[-1]:.2f}")
    print(f"fused / keras: median {statistics.median(ratios):.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
