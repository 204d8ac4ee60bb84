"""The project's folders and files that more than one stage, flow or command names.

Relative to the project root (where ``dvc.yaml`` lives); ``dvc.yaml`` spells the same paths.
"""

from pathlib import Path

RAW_DIR = Path("data/raw")
RAW_MANIFEST = RAW_DIR / "manifest.csv"
SPLIT_DIR = Path("data/split")
SPLIT_MANIFEST = SPLIT_DIR / "manifest.csv"
MODEL_PATH = Path("models/model.keras")
METRICS = Path("metrics.json")
TRAIN_METRICS = Path("train_metrics.json")
TRAIN_RUN = Path("train_run.json")
