"""Training throughput: the project's training path against the blog's Keras 2 loop.

Method, output and figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agegap import CLASS_NAMES  # noqa: E402
from agegap.machine import cpu_has_amx, cpu_name  # noqa: E402

DEFAULT_ARCHIVE = REPO.parent / "shared" / "datasets" / "LAGdataset_100.zip"
IMAGE_SIZE = 100
TRAIN_PER_CLASS = 1200
VALIDATION_PER_CLASS = 600
BLOG_TRAIN_IMAGES = 1200
RESULT_PREFIX = "RESULT "


# --------------------------------------------------------------------------- data


def real_split(archive: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """The archive's decoded images, split per image at random as the blog did.

    Throughput does not depend on which faces land where, and the project's own identity
    split needs the DVC stages. The archive is extracted into a temporary folder only.
    """
    from agegap.archive import extract_archive, find_lag_root
    from agegap.images import load_many
    from agegap.lag import scan_lag

    by_label: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="agegap-bench-lag-") as tmp:
        extract_archive(archive, Path(tmp))
        root = find_lag_root(Path(tmp), archive.name)
        manifest, _ = scan_lag(root)
        decoded = manifest[manifest["status"] == "ok"]
        for label, name in enumerate(CLASS_NAMES):
            paths = [root / path for path in decoded.loc[decoded["label"] == name, "path"]]
            by_label[label] = load_many(paths, IMAGE_SIZE)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "validation": []}
    for label, images in by_label.items():
        need = TRAIN_PER_CLASS + VALIDATION_PER_CLASS
        if len(images) < need:
            raise SystemExit(f"{archive}: only {len(images)} images of class {label}, need {need}")
        order = rng.permutation(len(images))
        parts["train"] += [(images[i], label) for i in order[:TRAIN_PER_CLASS]]
        parts["validation"] += [(images[i], label) for i in order[TRAIN_PER_CLASS:need]]
    return _as_arrays(parts)


def random_split(seed: int = 0) -> dict[str, np.ndarray]:
    """Random bytes of the real split's shape, for machines without the archive."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, per_class in (("train", TRAIN_PER_CLASS), ("validation", VALIDATION_PER_CLASS)):
        n = 2 * per_class
        out[f"{name}_x"] = rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        out[f"{name}_y"] = np.repeat(np.arange(2, dtype=np.float32), per_class)
    return out


def _as_arrays(parts: dict[str, list[tuple[np.ndarray, int]]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, rows in parts.items():
        out[f"{name}_x"] = np.stack([image for image, _ in rows])
        out[f"{name}_y"] = np.asarray([label for _, label in rows], dtype=np.float32)
    return out


def write_pngs(arrays: dict[str, np.ndarray], folder: Path) -> None:
    """``folder/{train,validation}/{old,young}/*.png`` for ``flow_from_directory``."""
    from PIL import Image

    for split in ("train", "validation"):
        for index, (image, label) in enumerate(
            zip(arrays[f"{split}_x"], arrays[f"{split}_y"], strict=True)
        ):
            target = folder / split / CLASS_NAMES[int(label)] / f"{index:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(target, compress_level=1)


# ------------------------------------------------------------------- child: (a)


def child_project(
    data: Path, batch_size: int, epochs: int, augment: bool, images: int
) -> dict[str, Any]:
    """The project's path: ``configure`` + ``train_model`` on the blog's recipe."""

    from agegap.dataset import ImageSet
    from agegap.params import params_from_dict
    from agegap.runtime import accelerator_name, configure
    from agegap.training import EpochTimer, train_model

    arrays = np.load(data / "arrays.npz")
    recipes = yaml.safe_load((REPO / "bench" / "accuracy_recipes.yaml").read_text("utf-8"))
    overrides: dict[str, Any] = {
        **recipes["blog"],
        "batch_size": batch_size, "epochs": epochs, "train_images_per_epoch": images
    }
    if not augment:
        overrides.update(augment_shear_degrees=0.0, augment_zoom=0.0, augment_flip=False)
    params = params_from_dict(overrides, source="bench/accuracy_recipes.yaml")
    settings = configure(params)
    train = ImageSet(arrays["train_x"], arrays["train_y"])
    validation = ImageSet(arrays["validation_x"], arrays["validation_y"])
    cpu = EpochTimer(clock=time.process_time)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(
            params, train, validation, Path(tmp) / "model.keras", [cpu, timer], verbose=0
        )
    images = result.steps_per_epoch * batch_size
    return {
        "images_per_second": result.train_images_per_second,
        "best_epoch_images_per_second": images
        / min(timer.train_seconds[1:] or timer.train_seconds),
        "seconds_per_epoch": result.seconds_per_epoch,
        "cpu_ms_per_image": _ms_per_image(cpu.train_seconds, images),
        "best_val_accuracy": result.best_val_accuracy,
        "settings": {**settings, "accelerator": accelerator_name()},
    }


# ------------------------------------------------------------------- child: (b)


def child_blog(data: Path, batch_size: int, epochs: int, images: int) -> dict[str, Any]:
    """The blog's Keras 2 loop, as written in 2017 (``fit`` replaces ``fit_generator``)."""
    import tensorflow as tf
    import tf_keras
    from tf_keras import layers
    from tf_keras.preprocessing.image import ImageDataGenerator

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            layers.Conv2D(32, (5, 5), padding="same", input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            layers.Activation("relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(32, (5, 5), padding="same"),
            layers.Activation("relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, (5, 5), padding="same"),
            layers.Activation("relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dense(64),
            layers.Activation("relu"),
            layers.Dropout(0.1),
            layers.Dense(1),
            layers.Activation("sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    train_gen = ImageDataGenerator(
        rescale=1.0 / 255, shear_range=0.2, zoom_range=0.2, horizontal_flip=True
    ).flow_from_directory(
        str(data / "png" / "train"),
        target_size=(IMAGE_SIZE, IMAGE_SIZE),
        batch_size=batch_size,
        class_mode="binary",
    )
    validation_gen = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        str(data / "png" / "validation"),
        target_size=(IMAGE_SIZE, IMAGE_SIZE),
        batch_size=batch_size,
        class_mode="binary",
    )
    steps = images // batch_size
    timer = _epoch_clock(tf_keras.callbacks.Callback, time.perf_counter)
    cpu = _epoch_clock(tf_keras.callbacks.Callback, time.process_time)
    history = model.fit(
        train_gen,
        steps_per_epoch=steps,
        epochs=epochs,
        validation_data=validation_gen,
        validation_steps=max(1, images // 2 // batch_size),  # the blog's 600 for 1,200
        callbacks=[timer, cpu],
        verbose=0,
    ).history
    train_seconds = timer.train_seconds[1:] or timer.train_seconds
    epoch_seconds = timer.epoch_seconds[1:] or timer.epoch_seconds
    return {
        "images_per_second": steps * batch_size / float(np.mean(train_seconds)),
        "best_epoch_images_per_second": steps * batch_size / min(train_seconds),
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "cpu_ms_per_image": _ms_per_image(cpu.train_seconds, steps * batch_size),
        "best_val_accuracy": float(max(history["val_accuracy"])),
        "settings": {"backend": "tf_keras " + tf_keras.__version__, "tensorflow": tf.__version__},
    }


def _epoch_clock(base: type, clock: Callable[[], float]) -> Any:
    """``agegap.training.EpochTimer`` for the blog's ``tf_keras`` loop, on ``clock``.

    The blog's process must not import Keras 3 (nor so the library's callbacks); the
    process CPU clock (all threads) counts work, not waiting, unlike wall time.
    """

    class EpochClock(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.train_seconds: list[float] = []
            self.epoch_seconds: list[float] = []
            self._start = self._train_end = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start, self._train_end = clock(), 0.0

        def on_test_begin(self, logs: dict | None = None) -> None:
            self._train_end = self._train_end or clock()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now = clock()
            self.train_seconds.append((self._train_end or now) - self._start)
            self.epoch_seconds.append(now - self._start)

    return EpochClock()


def _ms_per_image(seconds: list[float], images_per_epoch: int) -> float:
    """Milliseconds per image, over the epochs after the first (which also compiles)."""
    later = seconds[1:] or seconds
    return 1000.0 * float(np.mean(later)) / images_per_epoch


# ------------------------------------------------------------------------ parent


def machine() -> dict[str, str]:
    """CPU model, cores, AMX, Keras backend and GPU name (if ``nvidia-smi`` sees one)."""
    gpu = "none"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        )
        gpu = ", ".join(query.stdout.split("\n")[:-1]) or "none"
    return {
        "cpu": cpu_name(),
        "amx_bf16": "yes" if cpu_has_amx() else "no",
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "gpu": gpu,
        "python": platform.python_version(),
    }


def run_child(args: list[str], env: dict[str, str], work: Path) -> dict[str, Any]:
    """Run one child; return its result and its peak RSS from ``os.wait4``'s ``ru_maxrss``.

    Output goes to files, not pipes, so the parent can reap the child itself with
    ``wait4`` and read that one child's resource usage (``RUSAGE_CHILDREN`` would give
    the maximum over all children so far).
    """
    out_path, err_path = work / "child.out", work / "child.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdout=out, stderr=err, env=env, cwd=REPO,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = err_path.read_text(errors="replace")[-4000:]
        raise SystemExit(f"child {args} failed ({process.returncode}):\n{tail}")
    lines = [x for x in out_path.read_text().splitlines() if x.startswith(RESULT_PREFIX)]
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not timed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16],
                        help="project batch sizes to time, e.g. 16 128 (the blog runs at 16)")
    parser.add_argument("--augment", choices=("on", "off", "both"), default="on",
                        help="the project's augmentation (the blog loop always augments)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    parser.add_argument("--images-per-epoch", type=int, default=BLOG_TRAIN_IMAGES,
                        help="training images per epoch (the blog's 1200; less for a smoke run)")
    parser.add_argument("--data", choices=("auto", "real", "random"), default="auto")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--no-blog", action="store_true", help="skip (b), the Keras 2 loop")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--child", choices=("project", "blog"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--no-augment", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "project":
            result = child_project(
                args.workdir, args.batch_size, args.epochs, not args.no_augment,
                args.images_per_epoch,
            )
        else:
            result = child_blog(args.workdir, args.batch_size, args.epochs, args.images_per_epoch)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    info = machine()
    import importlib.util

    blog = not args.no_blog and all(
        importlib.util.find_spec(name) is not None for name in ("tf_keras", "tensorflow", "scipy")
    )
    use_real = args.data == "real" or (args.data == "auto" and args.archive.is_file())
    if args.data == "real" and not args.archive.is_file():
        raise SystemExit(f"{args.archive}: no such archive")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    configs = [
        (batch, augment)
        for batch in args.batch_sizes
        for augment in ((True, False) if args.augment == "both" else (args.augment == "on",))
    ]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agegap-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        arrays = real_split(args.archive) if use_real else random_split()
        np.savez(work / "arrays.npz", **arrays)
        if blog:
            write_pngs(arrays, work / "png")
        source = f"real LAG ({args.archive.name})" if use_real else "random uint8 bytes"
        print(
            f"data: {source}, {len(arrays['train_y'])} train + {len(arrays['validation_y'])} "
            f"validation images {IMAGE_SIZE}x{IMAGE_SIZE}, prepared in "
            f"{time.perf_counter() - started:.1f} s; {args.epochs} epochs per run "
            f"(first not timed), {args.repeats} alternating rounds"
        )
        common = ["--workdir", str(work), "--epochs", str(args.epochs),
                  "--images-per-epoch", str(args.images_per_epoch)]
        for round_index in range(args.repeats):
            for batch, augment in configs:
                with_blog = blog and batch == 16 and augment
                order = ["project", "blog"] if with_blog else ["project"]
                if round_index % 2:
                    order.reverse()
                for side in order:
                    child_args = ["--child", side, "--batch-size", str(batch), *common]
                    if not augment:
                        child_args.append("--no-augment")
                    result = run_child(child_args, env, work)
                    row = {"round": round_index + 1, "side": side, "batch": batch,
                           "augment": augment, **result}
                    rows.append(row)
                    print(
                        f"  round {row['round']} {side:7s} batch {batch:3d} "
                        f"augment {'on ' if augment else 'off'}: "
                        f"{row['images_per_second']:8.1f} images/s "
                        f"(fastest epoch {row['best_epoch_images_per_second']:6.1f}), "
                        f"{row['cpu_ms_per_image']:6.2f} CPU-ms/image, "
                        f"{row['seconds_per_epoch']:6.2f} s/epoch, "
                        f"peak {row['peak_rss_mb']:6.0f} MB, "
                        f"best val_acc {row['best_val_accuracy']:.3f}",
                        flush=True,
                    )
    settings = next((r["settings"] for r in rows if r["side"] == "project"), {})
    print("project settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")


def summary(rows: list[dict[str, Any]]) -> str:
    """A markdown table: medians per configuration, and the ratio (a)/(b) per round."""
    lines = [
        "",
        "| run | batch | augment | images/s (median) | fastest epoch, images/s | CPU-ms/image "
        "| s/epoch | peak MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["side"], r["batch"], r["augment"]) for r in rows},
                  key=lambda k: (k[0] != "blog", k[1], not k[2]))
    for side, batch, augment in keys:
        key = (side, batch, augment)
        chosen = [r for r in rows if (r["side"], r["batch"], r["augment"]) == key]
        name = "(b) blog, Keras 2 loop" if side == "blog" else "(a) project"
        lines.append(
            f"| {name} | {batch} | {'on' if augment else 'off'} | "
            f"{statistics.median(r['images_per_second'] for r in chosen):.0f} | "
            f"{max(r['best_epoch_images_per_second'] for r in chosen):.0f} | "
            f"{statistics.median(r['cpu_ms_per_image'] for r in chosen):.2f} | "
            f"{statistics.median(r['seconds_per_epoch'] for r in chosen):.2f} | "
            f"{max(r['peak_rss_mb'] for r in chosen):.0f} |"
        )
    pairs = []
    for round_index in sorted({r["round"] for r in rows}):
        a = [r for r in rows if r["round"] == round_index and r["side"] == "project"
             and r["batch"] == 16 and r["augment"]]
        b = [r for r in rows if r["round"] == round_index and r["side"] == "blog"]
        if a and b:
            pairs.append((a[0], b[0]))
    if pairs:
        ratios = [a["images_per_second"] / b["images_per_second"] for a, b in pairs]
        cpu_ratios = [b["cpu_ms_per_image"] / a["cpu_ms_per_image"] for a, b in pairs]
        a_median = statistics.median(a["images_per_second"] for a, _ in pairs)
        b_median = statistics.median(b["images_per_second"] for _, b in pairs)
        a_best = max(a["best_epoch_images_per_second"] for a, _ in pairs)
        b_best = max(b["best_epoch_images_per_second"] for _, b in pairs)
        lines += [
            "",
            # Each round's (a) and (b) ran back to back, so their ratio sees similar load;
            # the median over rounds is the headline figure.
            f"ratio (a)/(b), images/s at batch 16 with augmentation: "
            f"{statistics.median(ratios):.2f} (median of rounds; per round "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + f"); ratio of the medians {a_median / b_median:.2f}",
            f"ratio of the fastest epochs (least disturbed by other load): {a_best / b_best:.2f}",
            "ratio of CPU time per image (b)/(a): " + ", ".join(f"{x:.2f}" for x in cpu_ratios),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
