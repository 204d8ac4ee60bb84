"""Where the split stage leaves the split, and the one reader of its manifest.

Apart from ``stages/split.py`` so that ``train`` and ``evaluate``, which only read the
split, do not execute the split stage's code (nor the archive scanner and the splitter it
imports): an edit there re-runs them only if it changes ``data/split`` itself.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from agegap.errors import AgegapError

SPLIT_DIR = Path("data/split")


def read_split(root: Path = Path(".")) -> pd.DataFrame:
    """The split manifest; its ``split_path`` column is relative to ``root / SPLIT_DIR``."""
    path = root / SPLIT_DIR / "manifest.csv"
    if not path.is_file():
        raise AgegapError(f"{path}: missing; run the split stage first")
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
