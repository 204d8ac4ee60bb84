"""The split images as in-memory uint8 arrays, and the seeded stream of training batches."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agegap import CLASS_NAMES
from agegap.errors import AgegapError
from agegap.images import DECODE_THREADS, load_many
from agegap.layout import SPLIT_DIR, SPLIT_MANIFEST
from agegap.split_manifest import read_split


@dataclass(frozen=True)
class ImageSet:
    """Images ``(n, size, size, 3)`` uint8 and labels ``(n,)`` float32 (1 = young)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def load_split(split: str, image_size: int, root: Path = Path(".")) -> ImageSet:
    """Decode every image of one split (``train``, ``validation`` or ``test``)."""
    manifest = read_split(root)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise AgegapError(f"{root / SPLIT_MANIFEST}: the {split} split is empty")
    paths = tuple(rows["split_path"])
    images = load_many([root / SPLIT_DIR / p for p in paths], image_size)
    labels = (rows["label"].to_numpy() == CLASS_NAMES[1]).astype(np.float32)
    return ImageSet(images, labels)


def load_folder(
    folder: Path,
    image_size: int,
    *,
    loader: Callable[[Path], np.ndarray] | None = None,
    on_error: Callable[[Path, str], None] | None = None,
) -> ImageSet:
    """A labelled folder laid out like a split: ``folder/old/*`` and ``folder/young/*``.

    By default every file is decoded as :func:`load_split` decodes the split, and the
    first bad file raises. ``agegap score`` passes ``loader`` (one ``(size, size, 3)``
    uint8 input per file, e.g. a face crop) and ``on_error``, which is told of each bad
    file so that the rest are still scored.
    """
    from agegap.images import UndecodableImageError, inspect_image

    paths: list[Path] = []
    labels: list[float] = []
    for index, label in enumerate(CLASS_NAMES):
        for path in sorted((folder / label).glob("*")) if (folder / label).is_dir() else []:
            if path.is_file():
                try:
                    inspect_image(path)
                except UndecodableImageError as error:
                    if on_error is None:
                        raise AgegapError(f"{path}: {error}") from None
                    on_error(path, str(error))
                    continue
                paths.append(path)
                labels.append(float(index))
    if not paths:
        raise AgegapError(f"{folder}: no images in {folder}/old/ or {folder}/young/")
    if loader is None:
        images = load_many(paths, image_size)
    else:
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            images = np.stack(list(pool.map(loader, paths)))
    return ImageSet(images, np.asarray(labels, np.float32))


def batch_order(size: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless index batches into a set of ``size`` images, one reshuffled pass after another.

    Like Keras 2's ``flow_from_directory``, an "epoch" of ``steps_per_epoch`` batches
    continues where the last one stopped, so with the blog's 1,200 images per epoch
    two epochs see all 2,400. The order depends on ``seed`` alone.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(size)
    position = 0
    while True:
        if position + batch_size > len(order):
            rest = order[position:]
            order = np.concatenate([rest, rng.permutation(size)])
            position = 0
        yield order[position : position + batch_size]
        position += batch_size


def mixup_draws(
    batch_size: int, alpha: float, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless ``(partners, weights)`` for mixup (Zhang et al., 2018), one pair per batch.

    Image ``i`` of a batch is blended with image ``partners[i]`` of the same batch, with
    weight ``weights[i]`` ~ Beta(alpha, alpha) on its own side. Drawn from a generator of
    its own, so that turning mixup on leaves :func:`batch_order` (and so the images each
    step sees) as it was.
    """
    rng = np.random.default_rng([seed, 1])
    while True:
        yield rng.permutation(batch_size), rng.beta(alpha, alpha, batch_size).astype(np.float32)


def training_batches(
    data: ImageSet, batch_size: int, seed: int, mixup_alpha: float = 0.0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled ``(images, labels)`` batches in :func:`batch_order`, mixed up
    where ``mixup_alpha`` > 0 (images stay uint8, rounded; labels become fractions)."""
    batches = batch_order(len(data), batch_size, seed)
    if not mixup_alpha:
        for chosen in batches:
            yield data.images[chosen], data.labels[chosen]
        return
    draws = mixup_draws(batch_size, mixup_alpha, seed)
    for chosen, (partners, weights) in zip(batches, draws, strict=False):  # both endless
        images, labels = data.images[chosen].astype(np.float32), data.labels[chosen]
        pixels = weights[:, None, None, None]
        mixed = images * pixels + images[partners] * (1 - pixels)
        yield np.rint(mixed).astype(np.uint8), labels * weights + labels[partners] * (1 - weights)


def training_stream(
    data: ImageSet, batch_size: int, seed: int, batches: int, mixup_alpha: float = 0.0
) -> object:
    """What ``model.fit`` reads: the first ``batches`` of :func:`training_batches`.

    Under TensorFlow the same batches come from a ``tf.data`` pipeline that gathers them
    from the arrays inside the runtime: a Python generator costs a ``PyFunc`` call per
    batch, which holds the GIL and a CPU core (docs/performance.md). Other backends read
    the generator.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return training_batches(data, batch_size, seed, mixup_alpha)
    import tensorflow as tf

    order = np.stack(list(itertools.islice(batch_order(len(data), batch_size, seed), batches)))
    images = tf.constant(data.images)
    labels = tf.constant(data.labels)
    if not mixup_alpha:
        return (
            tf.data.Dataset.from_tensor_slices(order)
            .map(lambda chosen: (tf.gather(images, chosen), tf.gather(labels, chosen)))
            .prefetch(2)
        )
    draws = list(itertools.islice(mixup_draws(batch_size, mixup_alpha, seed), batches))
    partner_order = np.stack(
        [chosen[partners] for chosen, (partners, _) in zip(order, draws, strict=True)]
    )
    weights = np.stack([weight for _, weight in draws])

    def blend(chosen, partner, weight):
        own, other = (tf.cast(tf.gather(images, i), tf.float32) for i in (chosen, partner))
        pixels = weight[:, None, None, None]
        mixed = own * pixels + other * (1 - pixels)
        own_label, other_label = tf.gather(labels, chosen), tf.gather(labels, partner)
        mixed_labels = own_label * weight + other_label * (1 - weight)
        return tf.cast(tf.round(mixed), tf.uint8), mixed_labels

    return (
        tf.data.Dataset.from_tensor_slices((order, partner_order, weights))
        .map(blend)
        .prefetch(2)
    )
