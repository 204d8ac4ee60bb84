"""Training speed of one recipe: this checkout's code against a git revision's, side by
side in one run.

    python bench/train_step.py --against HEAD~1
    python bench/train_step.py --against 8272089 --row blog+cutout --rounds 5 --epochs 4

Each round trains a fresh model of the row of ``studies/accuracy.yaml``, once with this
checkout's ``agegap`` package and once with the revision's (extracted with ``git
archive`` into a temporary folder), alternating, each in its own process, on random bytes
of the real images' shape (a step's cost does not depend on the faces), with the run
settings every training run uses (``configure``, ``compiled_model``). The first epoch
(tracing) is not timed. Prints, per side and round, images/s and the process CPU time
per image, then the per-round speed-ups on both measures and their medians, and the
machine. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # after the script's folder; a side's own agegap goes first
DEFAULT_ROW = "blog+batchnorm+cosine+fullepochs+cutout+gray+jitter+scale0.3+blur"


def row_overrides(row: str) -> dict:
    """The parameters ``row`` of the accuracy study sets, from this checkout's study."""
    from agegap.errors import AgegapError
    from flows.study_plan import load_study, study_path

    try:
        return dict(load_study(study_path(REPO, "accuracy")).row(row).overrides)
    except AgegapError as error:
        raise SystemExit(f"error: {error}") from None


def timed_params(overrides: dict, epochs: int, images: int):
    """A row's params for ``epochs`` of ``images`` training images."""
    from agegap.params import params_from_dict

    return params_from_dict(
        {**overrides, "epochs": epochs, "train_images_per_epoch": images},
        source="studies/accuracy.yaml",
    )


def training_speed(params, images: int) -> tuple[float, float]:
    """The median training images/s of epochs 2 onwards and their median process CPU time
    per image in ms (all threads: it counts work, not waiting, so other load and a
    throttled virtual CPU move it far less), for a fresh model of ``params`` trained on
    ``images`` random images per epoch, drawn across both classes."""
    import time

    import tensorflow as tf

    from agegap.runtime import configure
    from agegap.training import EpochTimer, compiled_model
    from bench.train_throughput import random_split

    configure(params)
    steps = images // params.batch_size
    arrays = random_split()
    # random_split orders its labels by class: pick across both, as a real epoch would.
    picked = np.random.default_rng(0).permutation(len(arrays["train_y"]))[:images]
    batches = (
        tf.data.Dataset.from_tensor_slices((arrays["train_x"][picked], arrays["train_y"][picked]))
        .batch(params.batch_size).cache().repeat().prefetch(2)
    )
    model = compiled_model(params, steps)
    wall, cpu = EpochTimer(), EpochTimer(time.process_time)
    model.fit(batches, steps_per_epoch=steps, epochs=params.epochs, callbacks=[wall, cpu],
              verbose=0)
    trained = steps * params.batch_size
    return (statistics.median(trained / s for s in wall.train_seconds[1:]),
            statistics.median(1000 * s / trained for s in cpu.train_seconds[1:]))


def parse_round_options(parser: argparse.ArgumentParser, argv: list[str] | None,
                        row_help: str) -> argparse.Namespace:
    """``parser``'s arguments plus the options every side-by-side step benchmark takes:
    the row, rounds, epochs (at least 2: the first traces and is not timed) and images."""
    parser.add_argument("--row", default=DEFAULT_ROW, help=row_help)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3,
                        help="per side and round, the first not timed")
    parser.add_argument("--images", type=int, default=800, help="training images per epoch")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first epoch traces and is not timed)")
    return args


def machine_line() -> str:
    """The machine a benchmark ran on, in one line."""
    from bench.train_throughput import machine

    return "machine: " + "; ".join(f"{key}: {value}" for key, value in machine().items())


def child(code_root: str, overrides: str, epochs: int, images: int) -> None:
    """One side: ``agegap`` imported from ``code_root``, the rest of the bench from here."""
    sys.path.insert(0, code_root)
    params = timed_params(json.loads(overrides), epochs, images)
    print("RESULT {} {}".format(*training_speed(params, images)))


def side_speed(code_root: Path, overrides: dict, epochs: int, images: int) -> tuple[float, float]:
    """Images/s and CPU-ms per image of the side whose ``agegap`` is in ``code_root``, with
    the environment that side's own ``agegap`` sets (the user's settings win)."""
    from agegap import USER_ONEDNN_SETTING

    env = dict(os.environ)
    if USER_ONEDNN_SETTING is None:
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(code_root), json.dumps(overrides),
         str(epochs), str(images)],
        capture_output=True, text=True, check=False, env=env,
    )
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        raise SystemExit(f"error: the side of {code_root} failed:\n{done.stderr[-2000:]}")
    _, per_second, cpu_ms = results[-1].split()
    return float(per_second), float(cpu_ms)


def extract_revision(revision: str, folder: Path) -> None:
    """``revision``'s ``agegap`` package into ``folder``; a one-line error if git refuses."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "agegap"],
                             capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"error: --against {revision}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, metavar="REVISION",
                        help="a git revision whose agegap package is the other side")
    args = parse_round_options(parser, argv, "a row of studies/accuracy.yaml")
    overrides = row_overrides(args.row)
    print(machine_line())
    print(f"row: {args.row}; this checkout against {args.against}; {args.images} images "
          f"per epoch; median of epochs 2 to {args.epochs}")
    ratios: dict[str, list[float]] = {"images/s": [], "CPU time per image": []}
    with tempfile.TemporaryDirectory(prefix="agegap-bench-revision-") as tmp:
        extract_revision(args.against, Path(tmp))
        roots = {"this checkout": REPO, args.against: Path(tmp)}
        for round_ in range(args.rounds):
            order = list(roots) if round_ % 2 == 0 else list(roots)[::-1]
            speed = {side: side_speed(roots[side], overrides, args.epochs, args.images)
                     for side in order}
            (ours, our_cpu), (theirs, their_cpu) = speed["this checkout"], speed[args.against]
            ratios["images/s"].append(ours / theirs)
            ratios["CPU time per image"].append(their_cpu / our_cpu)
            print(f"round {round_ + 1}: this checkout {ours:.1f} images/s, {our_cpu:.2f} "
                  f"CPU-ms/image; {args.against} {theirs:.1f} images/s, {their_cpu:.2f} "
                  f"CPU-ms/image", flush=True)
    for measure, values in ratios.items():
        print(f"this checkout's speed-up over {args.against}, {measure}: median "
              f"{statistics.median(values):.2f} (rounds {', '.join(f'{r:.2f}' for r in values)})")


if __name__ == "__main__":
    main()
