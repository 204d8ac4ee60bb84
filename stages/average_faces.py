"""``average_faces`` stage: the mean face of each split and class, and sample grids.

The blog's first look at the data: the three splits should look alike, or the split is biased.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from agegap import CLASS_NAMES
from agegap.atomic import atomic_dir
from agegap.errors import exits_cleanly
from agegap.images import load_many
from agegap.layout import SPLIT_DIR
from agegap.params import Params, load_params
from agegap.split_manifest import read_split
from agegap.splitting import SPLITS

OUTPUT_DIR = Path("plots/average_faces")
GRID_SIDE = 5


def average_faces(params: Params, root: Path = Path(".")) -> dict[str, np.ndarray]:
    """Write the mean images, the 2x3 figure and the sample grids; return the means."""
    manifest = read_split(root)
    manifest = manifest[manifest["split"].isin(SPLITS)]
    paths = [root / SPLIT_DIR / p for p in manifest["split_path"]]
    images = load_many(paths, params.image_size)
    means: dict[str, np.ndarray] = {}
    groups = (manifest["split"] + "/" + manifest["label"]).to_numpy()
    for split_name in SPLITS:
        for label in CLASS_NAMES:
            mask = groups == f"{split_name}/{label}"
            if mask.any():
                mean = images[mask].mean(axis=0, dtype=np.float64)
                means[f"{split_name}/{label}"] = np.rint(mean).astype(np.uint8)
    rng = np.random.default_rng(params.split_seed)
    with atomic_dir(root / OUTPUT_DIR) as staging:
        for key, mean in means.items():
            Image.fromarray(mean).save(staging / f"mean_{key.replace('/', '_')}.png")
        _figure(means, staging / "average_faces.png")
        for label in CLASS_NAMES:
            chosen = np.flatnonzero(groups == f"train/{label}")
            if chosen.size:
                pick = rng.choice(chosen, size=min(GRID_SIDE**2, chosen.size), replace=False)
                Image.fromarray(_grid(images[np.sort(pick)])).save(
                    staging / f"samples_train_{label}.png"
                )
    return means


def _figure(means: dict[str, np.ndarray], target: Path) -> None:
    figure, axes = plt.subplots(len(CLASS_NAMES), len(SPLITS), figsize=(9, 6.4))
    for row, label in enumerate(CLASS_NAMES):
        for column, split_name in enumerate(SPLITS):
            axis = axes[row][column]
            key = f"{split_name}/{label}"
            if key in means:
                axis.imshow(means[key])
            axis.set_title(f"average {label} face ({split_name})")
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(target, dpi=80)
    plt.close(figure)


def _grid(images: np.ndarray) -> np.ndarray:
    """Tile up to 25 images into a 5x5 mosaic with 2-pixel white gutters."""
    count, height, width, channels = images.shape
    gutter = 2
    canvas = np.full(
        (GRID_SIDE * (height + gutter) - gutter, GRID_SIDE * (width + gutter) - gutter, channels),
        255,
        dtype=np.uint8,
    )
    for index in range(count):
        row, column = divmod(index, GRID_SIDE)
        top, left = row * (height + gutter), column * (width + gutter)
        canvas[top : top + height, left : left + width] = images[index]
    return canvas


@exits_cleanly
def main() -> None:
    means = average_faces(load_params())
    print(f"average_faces: {len(means)} mean images -> {OUTPUT_DIR}/", file=sys.stderr)


if __name__ == "__main__":
    main()
