"""Which experiment a model file is: its hash, the params that trained it, its test metrics.

Params and metrics come only when ``dvc.lock`` records this very file: others' would mislead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from agegap.layout import METRICS

LOCK_FILE = "dvc.lock"


def file_hashes(path: Path) -> tuple[str, str]:
    """(md5, sha256) of a file's bytes; DVC records the md5."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def _project_root(model: Path) -> Path | None:
    """The nearest folder above the model that holds a ``dvc.lock``."""
    for folder in model.resolve().parents:
        if (folder / LOCK_FILE).is_file():
            return folder
    return None


def _recorded(entries: Any, root: Path, model: Path) -> str | None:
    """The md5 that a stage's ``deps`` or ``outs`` list records for ``model``, if any."""
    for entry in entries or []:
        if isinstance(entry, dict) and (root / str(entry.get("path", ""))).resolve() == model:
            return entry.get("md5")
    return None


def model_identity(model_path: Path) -> dict[str, Any]:
    """What ``GET /model`` answers: hashes, and the params and test metrics when recorded."""
    model = model_path.resolve()
    md5, sha256 = file_hashes(model)
    identity: dict[str, Any] = {
        "file": str(model_path),
        "md5": md5,
        "sha256": sha256,
        "id": f"sha256:{sha256[:12]}",
        "recorded_in": None,
        "stage": None,
        "params": None,
        "metrics": None,
        "note": "",
    }
    root = _project_root(model)
    if root is None:
        identity["note"] = f"no {LOCK_FILE} above the model: params and metrics unknown"
        return identity
    try:
        stages = (yaml.safe_load((root / LOCK_FILE).read_text(encoding="utf-8")) or {}).get(
            "stages", {}
        )
    except (OSError, yaml.YAMLError) as error:
        identity["note"] = f"{LOCK_FILE} unreadable: {error}".splitlines()[0]
        return identity
    for name, stage in stages.items():
        recorded = _recorded(stage.get("outs"), root, model)
        if recorded is None:
            continue
        if recorded != md5:
            identity["note"] = (
                f"the file differs from the one {LOCK_FILE} records for stage {name} "
                "(changed after `dvc repro`?): params and metrics unknown"
            )
            return identity
        identity.update(
            id=f"md5:{md5[:12]}",
            recorded_in=str(root / LOCK_FILE),
            stage=name,
            params=(stage.get("params") or {}).get("params.yaml"),
        )
        identity["metrics"] = _test_metrics(stages, root, model, md5)
        if identity["metrics"] is None:
            identity["note"] = f"no {METRICS} recorded for this model"
        return identity
    identity["note"] = f"{LOCK_FILE} records no such model file: params and metrics unknown"
    return identity


def _test_metrics(stages: dict[str, Any], root: Path, model: Path, md5: str) -> dict | None:
    """``metrics.json`` when a locked stage computed it from this model file, unchanged since."""
    metrics = (root / METRICS).resolve()
    for stage in stages.values():
        recorded = _recorded(stage.get("outs"), root, metrics)
        if recorded is None or _recorded(stage.get("deps"), root, model) != md5:
            continue
        try:
            if file_hashes(metrics)[0] != recorded:
                return None
            return json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    return None
