"""The one reader of the split stage's manifest.

Apart from ``stages/split.py`` so that the stages that only read the split do not execute its code.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from agegap.errors import AgegapError
from agegap.layout import SPLIT_MANIFEST


def read_split(root: Path = Path(".")) -> pd.DataFrame:
    """The split manifest; its ``split_path`` column is relative to ``root / SPLIT_DIR``."""
    path = root / SPLIT_MANIFEST
    if not path.is_file():
        raise AgegapError(f"{path}: missing; run the split stage first")
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
