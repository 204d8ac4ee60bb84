"""Training throughput: the project's training path against the blog's Keras 2 loop, the
bare network and the hardware's own limit (matrix-product peak / FLOPs per image).

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
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agegap import CLASS_NAMES  # noqa: E402
from agegap.machine import (  # noqa: E402
    bfloat16_unit,
    cpu_name,
    native_features,
    onednn_isa_cap,
)

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


# ------------------------------------------------------ children: (a), (d), bare network


def run_params(recipe: str, batch_size: int, epochs: int, images: int, augment: bool) -> Any:
    """``recipe``: ``blog``, the network and training both sides share, or ``default``,
    ``params.yaml``'s; at the benchmark's batch size, epochs and images per epoch."""
    from agegap.params import load_params, params_from_dict

    if recipe == "default":
        base, source = load_params(REPO / "params.yaml").model_dump(), "params.yaml"
    else:
        from flows.study_plan import load_study, study_path

        base = load_study(study_path(REPO, "accuracy")).row("blog").overrides
        source = "studies/accuracy.yaml"
    overrides: dict[str, Any] = {
        **base, "batch_size": batch_size, "epochs": epochs, "train_images_per_epoch": images
    }
    if not augment:
        overrides.update(augment_shear_degrees=0.0, augment_zoom=0.0, augment_flip=False,
                         augment_cutout=0.0)
    return params_from_dict(overrides, source=source)


def child_project(
    data: Path, recipe: str, batch_size: int, epochs: int, augment: bool, images: int
) -> dict[str, Any]:
    """The project's path: ``configure`` + ``train_model`` (in-model augmentation, the
    ``tf.data`` stream, validation and checkpoint each epoch)."""

    from agegap.dataset import ImageSet
    from agegap.runtime import configure
    from agegap.training import EpochTimer, train_model

    arrays = np.load(data / "arrays.npz")
    params = run_params(recipe, batch_size, epochs, images, augment)
    settings = configure(params)
    train = ImageSet(arrays["train_x"], arrays["train_y"])
    validation = ImageSet(arrays["validation_x"], arrays["validation_y"])
    cpu = EpochTimer(clock=time.process_time)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_model(
            params, train, validation, Path(tmp) / "model.keras", [cpu, timer], verbose=0
        )
    return {
        **_timed(timer, cpu, result.steps_per_epoch * batch_size),
        "best_val_accuracy": result.best_val_accuracy,
        "settings": settings,
    }


def child_bare(data: Path, batch_size: int, epochs: int, images: int) -> dict[str, Any]:
    """The network alone: the blog recipe's model without augmentation, compiled as every
    run is (``compiled_model``), ``fit`` on arrays in memory, the same run settings.

    The batches are slices of tensors already in memory (``tf.data``): Keras' own adapter
    for numpy arrays made some float32 epochs far slower than others on the same CPU
    (docs/performance.md).
    """
    import tensorflow as tf

    from agegap.runtime import configure
    from agegap.training import EpochTimer, compiled_model

    arrays = np.load(data / "arrays.npz")
    params = run_params("blog", batch_size, epochs, images, augment=False)
    settings = configure(params)
    steps = max(1, images // batch_size)
    model = compiled_model(params, steps)
    count = steps * batch_size
    batches = (
        tf.data.Dataset.from_tensor_slices((arrays["train_x"][:count], arrays["train_y"][:count]))
        .batch(batch_size)
        .cache()
        .repeat()
        .prefetch(2)
    )
    cpu = EpochTimer(clock=time.process_time)
    timer = EpochTimer()
    model.fit(batches, steps_per_epoch=steps, epochs=epochs, callbacks=[cpu, timer], verbose=0)
    return {
        **_timed(timer, cpu, count),
        "flops_per_image": training_flops(model),
        "settings": settings,
    }


def training_flops(model: Any) -> dict[str, float]:
    """FLOPs of one training image, counted from the model's layers.

    A multiply-add is 2 FLOPs. Forward: every convolution and dense layer. Backward: the
    weight gradients (as many FLOPs as the forward) and the input gradients (as many
    again) of every such layer but the first, whose input needs no gradient. Bias,
    activations, pooling and the optimizer are left out: they add no matrix products.
    """
    import keras

    multiply_adds = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, _ = layer.kernel.shape
            _, height, width, channels_out = layer.output.shape
            multiply_adds.append(height * width * channels_out * kernel_h * kernel_w * channels_in)
        elif isinstance(layer, keras.layers.Dense):
            multiply_adds.append(int(np.prod(layer.kernel.shape)))
    forward = 2.0 * sum(multiply_adds)
    input_gradients = 2.0 * sum(multiply_adds[1:])
    return {
        "forward": forward,
        "weight_gradients": forward,
        "input_gradients": input_gradients,
        "total": 2 * forward + input_gradients,
    }


def child_matmul(size: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """The CPU's matrix-product peak at the run's precision: a ``size`` square ``tf.matmul``
    in the compute dtype ``configure`` chose (bfloat16 under ``mixed_bfloat16``)."""
    import tensorflow as tf

    from agegap.runtime import configure

    params = run_params("blog", 16, 1, 16, augment=False)
    settings = configure(params)
    dtype = "bfloat16" if settings["precision"] == "mixed_bfloat16" else "float32"
    a = tf.cast(tf.random.stateless_normal((size, size), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((size, size), seed=(3, 4)), dtype)
    product = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], "float32")))
    product(a, b).numpy()  # trace, and let oneDNN create its kernel
    seconds = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(repeats):
            result = product(a, b)
        result.numpy()
        seconds.append((time.perf_counter() - started) / repeats)
    return {
        "gflops": 2.0 * size**3 / min(seconds) / 1e9,
        "gflops_median": 2.0 * size**3 / statistics.median(seconds) / 1e9,
        "dtype": dtype,
        "size": size,
        "settings": settings,
    }


def _timed(timer: Any, cpu: Any, images: int) -> dict[str, float]:
    """Images/s (mean over the epochs after the first), fastest epoch, s/epoch, CPU-ms."""
    train_seconds = timer.train_seconds[1:] or timer.train_seconds
    epoch_seconds = timer.epoch_seconds[1:] or timer.epoch_seconds
    return {
        "images_per_second": images / float(np.mean(train_seconds)),
        "best_epoch_images_per_second": images / min(train_seconds),
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "cpu_ms_per_image": _ms_per_image(cpu.train_seconds, images),
    }


# ------------------------------------------------------------------- child: (b)


def child_blog(data: Path, batch_size: int, epochs: int, images: int) -> dict[str, Any]:
    """The blog's Keras 2 loop, as written in 2017 (``fit`` replaces ``fit_generator``), with
    TensorFlow's own oneDNN setting for this CPU, as the blog's script runs (``blog_onednn``)."""
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
    return {
        **_timed(timer, cpu, steps * batch_size),
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


# A child's question to TensorFlow: does it run oneDNN's kernels? It prints True or False.
ONEDNN_QUESTION = ("from tensorflow.python.util import _pywrap_util_port as port; "
                   "print(port.IsMklEnabled())")


@cache
def tensorflow_onednn_default() -> bool:
    """Whether TensorFlow left to itself runs oneDNN's kernels on this CPU: it does so only
    on CPUs with VNNI, bfloat16 or AMX. Asked of a fresh process without agegap's setting."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    probe = subprocess.run([sys.executable, "-c", ONEDNN_QUESTION], env=env,
                           capture_output=True, text=True, check=False)
    return probe.stdout.strip().endswith("True")


def blog_onednn() -> str:
    """``TF_ENABLE_ONEDNN_OPTS`` for the blog's loop: the user's if set, else TensorFlow's
    default, which agegap's import would otherwise override in the child."""
    from agegap import USER_ONEDNN_SETTING

    if USER_ONEDNN_SETTING is not None:
        return USER_ONEDNN_SETTING
    return "1" if tensorflow_onednn_default() else "0"


def onednn_sides() -> str:
    """Which sides run on oneDNN's kernels, in words."""
    from agegap import USER_ONEDNN_SETTING

    default = "on" if tensorflow_onednn_default() else "off"
    if USER_ONEDNN_SETTING is not None:
        return (f"TF_ENABLE_ONEDNN_OPTS={USER_ONEDNN_SETTING} on every side "
                f"(TensorFlow's default: {default})")
    return f"on for the project (agegap's default), {default} for the blog loop (TensorFlow's)"


def machine() -> dict[str, str]:
    """CPU model, cores, the features that decide its kernels, oneDNN's cap and which sides
    use it, Keras backend and GPU name (if ``nvidia-smi`` sees one)."""
    gpu = "none"
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        )
        gpu = ", ".join(query.stdout.split("\n")[:-1]) or "none"
    return {
        "cpu": cpu_name(),
        "features": " ".join(native_features()) or "none of avx2, avx512f, amx",
        "native bfloat16": bfloat16_unit() or "none",
        "ONEDNN_MAX_CPU_ISA": onednn_isa_cap() or "not set",
        "oneDNN": onednn_sides(),
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "gpu": gpu,
        "python": platform.python_version(),
    }


def child_env() -> dict[str, str]:
    """The environment of every child: this one, quiet TensorFlow, this checkout first."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


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


# The sides, in the order of a round: (a) the project's path on the blog's recipe, (b) the
# blog's loop, (d) the project's path on params.yaml's default recipe, the bare network,
# and the matrix-product peak. Every second round runs them in reverse.
SIDES = ("project", "blog", "default", "bare", "matmul")
SIDE_NAMES = {
    "project": "(a) project, blog recipe",
    "blog": "(b) blog, Keras 2 loop",
    "default": "(d) project, default recipe",
    "bare": "bare network, arrays in memory",
}


def child_result(args: argparse.Namespace) -> dict[str, Any]:
    if args.child == "project":
        return child_project(args.workdir, "blog", args.batch_size, args.epochs,
                             not args.no_augment, args.images_per_epoch)
    if args.child == "default":
        return child_project(args.workdir, "default", args.batch_size, args.epochs,
                             not args.no_augment, args.images_per_epoch)
    if args.child == "bare":
        return child_bare(args.workdir, args.batch_size, args.epochs, args.images_per_epoch)
    if args.child == "matmul":
        return child_matmul()
    return child_blog(args.workdir, args.batch_size, args.epochs, args.images_per_epoch)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not timed")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16],
                        help="project batch sizes to time, e.g. 16 128 (the blog runs at 16)")
    parser.add_argument("--augment", choices=("on", "off", "both"), default="on",
                        help="the project's augmentation (the blog loop always augments)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--images-per-epoch", type=int, default=BLOG_TRAIN_IMAGES,
                        help="training images per epoch (the blog's 1200; less for a smoke run)")
    parser.add_argument("--data", choices=("auto", "real", "random"), default="auto")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--no-blog", action="store_true", help="skip (b), the Keras 2 loop")
    parser.add_argument("--no-limit", action="store_true",
                        help="skip (d), the bare network and the matrix-product peak")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--no-augment", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(RESULT_PREFIX + json.dumps(child_result(args)), flush=True)
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
    env = child_env()
    blog_env = {**env, "TF_ENABLE_ONEDNN_OPTS": blog_onednn()}
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
                order = [side for side in SIDES if _runs(side, batch, augment, blog, args)]
                if round_index % 2:
                    order.reverse()
                for side in order:
                    child_args = ["--child", side, "--batch-size", str(batch), *common]
                    if not augment:
                        child_args.append("--no-augment")
                    result = run_child(child_args, blog_env if side == "blog" else env, work)
                    row = {"round": round_index + 1, "side": side, "batch": batch,
                           "augment": augment and side not in ("bare", "matmul"), **result}
                    rows.append(row)
                    print(f"  round {row['round']} " + _row_line(row), flush=True)
    settings = next((r["settings"] for r in rows if r["side"] == "project"), {})
    print("project settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")


def _runs(side: str, batch: int, augment: bool, blog: bool, args: argparse.Namespace) -> bool:
    """Whether ``side`` runs for this configuration: (b) only at the blog's batch 16 with
    augmentation, the limit's sides once per batch size (they do not augment)."""
    if side == "project":
        return True
    if side == "blog":
        return blog and batch == 16 and augment
    if args.no_limit:
        return False
    return side == "default" or augment or args.augment == "off"


def _row_line(row: dict[str, Any]) -> str:
    if row["side"] == "matmul":
        return (f"matmul  {row['size']}x{row['size']} {row['dtype']}: "
                f"{row['gflops']:6.0f} GFLOP/s (median {row['gflops_median']:.0f})")
    accuracy = row.get("best_val_accuracy")
    return (
        f"{row['side']:7s} batch {row['batch']:3d} augment {'on ' if row['augment'] else 'off'}: "
        f"{row['images_per_second']:8.1f} images/s "
        f"(fastest epoch {row['best_epoch_images_per_second']:6.1f}), "
        f"{row['cpu_ms_per_image']:6.2f} CPU-ms/image, "
        f"{row['seconds_per_epoch']:6.2f} s/epoch, "
        f"peak {row['peak_rss_mb']:6.0f} MB"
        + (f", best val_acc {accuracy:.3f}" if accuracy is not None else "")
    )


def summary(rows: list[dict[str, Any]]) -> str:
    """Markdown: medians per configuration, the ratio (a)/(b) per round, and the hardware
    ceiling with the fraction of it each side reaches."""
    return "\n".join(_throughput_table(rows) + _blog_ratio(rows) + _ceiling(rows))


def _throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| run | batch | augment | images/s (median) | fastest epoch, images/s | CPU-ms/image "
        "| s/epoch | peak MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (side, batch, augment), chosen in _configurations(rows):
        lines.append(
            f"| {SIDE_NAMES[side]} | {batch} | {'on' if augment else 'off'} | "
            f"{statistics.median(r['images_per_second'] for r in chosen):.0f} | "
            f"{max(r['best_epoch_images_per_second'] for r in chosen):.0f} | "
            f"{statistics.median(r['cpu_ms_per_image'] for r in chosen):.2f} | "
            f"{statistics.median(r['seconds_per_epoch'] for r in chosen):.2f} | "
            f"{max(r['peak_rss_mb'] for r in chosen):.0f} |"
        )
    return lines


def _configurations(rows: list[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    """The timed rows grouped by (side, batch, augment), in the order of ``SIDES``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["side"] != "matmul":
            groups.setdefault((row["side"], row["batch"], row["augment"]), []).append(row)
    return sorted(groups.items(), key=lambda item: (SIDES.index(item[0][0]), item[0][1],
                                                    not item[0][2]))


def _blog_ratio(rows: list[dict[str, Any]]) -> list[str]:
    pairs = []
    for round_index in sorted({r["round"] for r in rows}):
        a = [r for r in rows if r["round"] == round_index and r["side"] == "project"
             and r["batch"] == 16 and r["augment"]]
        b = [r for r in rows if r["round"] == round_index and r["side"] == "blog"]
        if a and b:
            pairs.append((a[0], b[0]))
    if not pairs:
        return []
    ratios = [a["images_per_second"] / b["images_per_second"] for a, b in pairs]
    cpu_ratios = [b["cpu_ms_per_image"] / a["cpu_ms_per_image"] for a, b in pairs]
    a_median = statistics.median(a["images_per_second"] for a, _ in pairs)
    b_median = statistics.median(b["images_per_second"] for _, b in pairs)
    a_best = max(a["best_epoch_images_per_second"] for a, _ in pairs)
    b_best = max(b["best_epoch_images_per_second"] for _, b in pairs)
    return [
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


def _ceiling(rows: list[dict[str, Any]]) -> list[str]:
    """The images/s the CPU's matrix-product peak allows the network, and how close each
    side comes (medians of the rounds; the peak is each round's best of 7)."""
    peaks = [r for r in rows if r["side"] == "matmul"]
    bare = [r for r in rows if r["side"] == "bare"]
    if not peaks or not bare:
        return []
    flops = bare[0]["flops_per_image"]
    peak = statistics.median(r["gflops"] for r in peaks)
    ceiling = peak * 1e9 / flops["total"]
    lines = [
        "",
        f"FLOPs per training image, counted from the model: {flops['total'] / 1e9:.3f} GFLOP "
        f"= forward {flops['forward'] / 1e9:.3f} + weight gradients "
        f"{flops['weight_gradients'] / 1e9:.3f} + input gradients "
        f"{flops['input_gradients'] / 1e9:.3f} (a multiply-add is 2 FLOPs; convolutions and "
        "dense layers only; no input gradient for the first layer)",
        f"matrix-product peak ({peaks[0]['size']}x{peaks[0]['size']} {peaks[0]['dtype']}): "
        f"{peak:.0f} GFLOP/s (median of rounds: "
        + ", ".join(f"{r['gflops']:.0f}" for r in peaks) + ")",
        f"hardware ceiling: {ceiling:.0f} images/s ({peak:.0f} GFLOP/s / "
        f"{flops['total'] / 1e9:.3f} GFLOP per image)",
        "",
        "| run | batch | augment | images/s (median) | share of the ceiling "
        "| share of the bare network |",
        "|---|---:|---|---:|---:|---:|",
    ]
    bare_median = {
        batch: statistics.median(r["images_per_second"] for r in bare if r["batch"] == batch)
        for batch in {r["batch"] for r in bare}
    }
    for (side, batch, augment), chosen in _configurations(rows):
        median = statistics.median(r["images_per_second"] for r in chosen)
        of_bare = f"{median / bare_median[batch]:.0%}" if batch in bare_median else "-"
        lines.append(
            f"| {SIDE_NAMES[side]} | {batch} | {'on' if augment else 'off'} | {median:.0f} | "
            f"{median / ceiling:.0%} | {of_bare} |"
        )
    return lines


if __name__ == "__main__":
    main()
