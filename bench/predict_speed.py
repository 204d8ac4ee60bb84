"""How long ``agegap predict`` takes on 1,000 images of 100x100, model loading excluded.

What is timed, and how to run it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agegap.predict import Source, collect, predict


def write_images(
    folder: Path, count: int, size: int, seed: int = 0, source: Path | None = None
) -> None:
    """``count`` ``size`` x ``size`` RGB PNGs: random noise, or the images of ``source`` in turn.

    Noise is what the target is set on; real faces (``--source data/split/test``) cost the
    detector more, as more windows pass its first stages.
    """
    rng = np.random.default_rng(seed)
    faces = sorted(p for p in source.rglob("*.png")) if source else []
    for index in range(count):
        if faces:
            image = Image.open(faces[index % len(faces)]).convert("RGB").resize((size, size))
        else:
            image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        image.save(folder / f"image_{index:05d}.png")


def load_or_build(model_path: Path | None) -> keras.Model:
    """The trained model at ``model_path``, or the default (blog) network, untrained.

    Inference time does not depend on the weights, so the untrained network measures
    the same thing without needing ``dvc repro`` first.
    """
    if model_path is not None:
        from agegap.model import load_trained_model

        return load_trained_model(model_path)
    from agegap.model import build_model
    from agegap.params import Params

    return build_model(Params())


def time_predict(model: keras.Model, folder: Path, *, detect: bool) -> tuple[float, int]:
    """Seconds to list, decode, (detect) and predict every image of ``folder``; rows made."""
    start = time.perf_counter()
    sources = [entry for entry in collect([folder]) if isinstance(entry, Source)]
    rows = sum(len(file_rows) for _, file_rows in predict(model, sources, detect=detect))
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a trained .keras model (default: build one)")
    parser.add_argument("--images", type=int, default=1000, help="how many images (default 1000)")
    parser.add_argument("--size", type=int, default=100, help="side of each image (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; best shown")
    parser.add_argument(
        "--source", type=Path, help="use the PNGs of this folder (e.g. data/split/test), not noise"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    model = load_or_build(args.model)
    load_seconds = time.perf_counter() - started
    shape = model.input_shape
    print(
        f"model: {args.model or 'blog network (untrained)'}, input {shape[1]}x{shape[2]}, "
        f"{model.count_params():,} weights, loaded/built in {load_seconds:.1f} s (not timed); "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        write_images(folder, args.images, args.size, source=args.source)
        warm = Path(scratch) / "warm"
        warm.mkdir()
        write_images(warm, 8, args.size, seed=1)
        for detect, label in ((False, "--no-detect-faces"), (True, "face detection  ")):
            cold, _ = time_predict(model, warm, detect=detect)
            times = []
            for _ in range(args.repeats):
                seconds, rows = time_predict(model, folder, detect=detect)
                times.append(seconds)
            best, worst = min(times), max(times)
            print(
                f"predict {label}: {args.images} images ({rows} rows) in {best:.2f} s best, "
                f"{worst:.2f} s worst of {args.repeats} = {args.images / best:.0f} images/s "
                f"(first call on 8 images, with tracing: {cold:.2f} s)"
            )


if __name__ == "__main__":
    main()
