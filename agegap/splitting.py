"""Assigning images to train / validation / test without leaks between them.

Units that must stay together (exact copies; a person, under ``identity``) are dealt in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from agegap import CLASS_NAMES
from agegap.errors import AgegapError
from agegap.layout import RAW_MANIFEST

SPLITS = ("train", "validation", "test")
UNUSED = "unused"


@dataclass(frozen=True)
class Quotas:
    """Images wanted per class in each split (the blog's 1200 / 600 / 110)."""

    train: int
    validation: int
    test: int

    def of(self, split: str) -> int:
        return int(getattr(self, split))


def _units(images: pd.DataFrame, strategy: str) -> np.ndarray:
    """Unit id per image: connected components of 'same bytes' (and 'same person')."""
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    keys = ["sha256", "identity"] if strategy == "identity" else ["sha256"]
    for key in keys:
        first: dict[str, int] = {}
        for index, value in enumerate(images[key].tolist()):
            if value in first:
                parent[find(index)] = find(first[value])
            else:
                first[value] = index
    return np.array([find(i) for i in range(len(images))])


def _surplus(unit_members: dict[str, list[int]], short: dict[str, int]) -> tuple[int, int]:
    """Images a partial unit would waste, then (negated) how much of the gap it fills."""
    wasted = sum(max(0, len(unit_members[c]) - short[c]) for c in short)
    filled = sum(min(len(unit_members[c]), short[c]) for c in short)
    return wasted, -filled


def deal_folds(units: list[int], sizes: dict[int, int], folds: int) -> list[list[int]]:
    """Units dealt in the given order to ``folds`` folds, each to the fold with the fewest
    images so far, so that the folds come out the same size give or take one unit."""
    dealt: list[list[int]] = [[] for _ in range(folds)]
    filled = [0] * folds
    for unit in units:
        smallest = filled.index(min(filled))
        dealt[smallest].append(unit)
        filled[smallest] += sizes[unit]
    return dealt


def assign_splits(
    manifest: pd.DataFrame, strategy: str, quotas: Quotas, seed: int,
    *, folds: int = 0, fold: int = 0,
) -> pd.DataFrame:
    """The decoded images of ``manifest`` with a ``split`` column (or ``unused``).

    With ``folds`` > 0 the test split is fold ``fold`` of a k-fold partition of all units
    (so over the k runs every image is tested once) and ``quotas.test`` is not used.
    Raises :class:`AgegapError` where train and validation cannot be filled; the test
    split takes what remains up to its quota, and the real counts are reported.
    """
    images = manifest[manifest["status"] == "ok"].sort_values("path").reset_index(drop=True)
    unit_of = _units(images, strategy)
    labels = images["label"].to_numpy()
    unit_ids = np.unique(unit_of)
    order = np.random.default_rng(seed).permutation(len(unit_ids))
    members: dict[int, dict[str, list[int]]] = {
        int(u): {c: [] for c in CLASS_NAMES} for u in unit_ids
    }
    for index, (unit, label) in enumerate(zip(unit_of.tolist(), labels.tolist(), strict=True)):
        members[unit][label].append(index)

    split_of_image = np.full(len(images), UNUSED, dtype=object)
    remaining = [int(unit_ids[i]) for i in order]
    dealt_by_quota = SPLITS
    if folds:
        sizes = {u: sum(len(m) for m in members[u].values()) for u in remaining}
        tested = set(deal_folds(remaining, sizes, folds)[fold])
        for unit in tested:
            for c in CLASS_NAMES:
                split_of_image[members[unit][c]] = "test"
        remaining = [u for u in remaining if u not in tested]
        dealt_by_quota = ("train", "validation")
    for split in dealt_by_quota:
        quota = quotas.of(split)
        filled = dict.fromkeys(CLASS_NAMES, 0)
        left_over = []
        for unit in remaining:
            sizes = {c: len(members[unit][c]) for c in CLASS_NAMES}
            if all(filled[c] + sizes[c] <= quota for c in CLASS_NAMES):
                for c in CLASS_NAMES:
                    split_of_image[members[unit][c]] = split
                    filled[c] += sizes[c]
            else:
                left_over.append(unit)
        # Units of whole persons rarely add up to the exact quota: top up from the next
        # units, leaving their surplus images unused rather than in another split.
        while left_over and any(filled[c] < quota for c in CLASS_NAMES):
            short = {c: quota - filled[c] for c in CLASS_NAMES}
            unit = min(left_over, key=lambda u: _surplus(members[u], short))
            left_over.remove(unit)
            for c in CLASS_NAMES:
                taken = members[unit][c][: short[c]]
                split_of_image[taken] = split
                filled[c] += len(taken)
        remaining = left_over
        if split != "test" and any(filled[c] < quota for c in CLASS_NAMES):
            raise AgegapError(
                f"{RAW_MANIFEST}: too few images for {split}_per_class={quota} with "
                f"split_strategy={strategy}{f' and cv_folds={folds}' if folds else ''} "
                f"(could fill {filled}); lower train_per_class / validation_per_class or "
                "use more data"
            )
    images["split"] = split_of_image.astype(str)
    return images


def split_report(assigned: pd.DataFrame, quotas: Quotas, strategy: str, seed: int) -> dict:
    """Counts per split and class, identities per split, and what splits share (leaks)."""
    used = assigned[assigned["split"] != UNUSED]
    counts = {
        split: {
            c: int(((used["split"] == split) & (used["label"] == c)).sum()) for c in CLASS_NAMES
        }
        for split in SPLITS
    }
    identities = {s: set(used.loc[used["split"] == s, "identity"]) for s in SPLITS}
    digests = {s: set(used.loc[used["split"] == s, "sha256"]) for s in SPLITS}
    shared_identities = sorted(
        (identities["train"] & identities["validation"])
        | (identities["train"] & identities["test"])
        | (identities["validation"] & identities["test"])
    )
    shared_digests = (
        (digests["train"] & digests["validation"])
        | (digests["train"] & digests["test"])
        | (digests["validation"] & digests["test"])
    )
    return {
        "strategy": strategy,
        "seed": seed,
        "requested_per_class": {s: quotas.of(s) for s in SPLITS},
        "counts": counts,
        "images": {s: sum(counts[s].values()) for s in SPLITS},
        "unused_images": int((assigned["split"] == UNUSED).sum()),
        "identities": {s: len(identities[s]) for s in SPLITS},
        "identities_shared_between_splits": len(shared_identities),
        "duplicate_images_shared_between_splits": len(shared_digests),
        "test_short_of_quota": any(counts["test"][c] < quotas.test for c in CLASS_NAMES),
    }
