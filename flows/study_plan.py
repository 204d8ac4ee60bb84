"""A study file, read and expanded into the runs it asks for.

A study (``studies/*.yaml``) is named rows of ``params.yaml`` overrides crossed with
seeds, split strategies and, optionally, the folds of a cross-validation. Each run's
DVC experiment is named after what it runs: the row for reading, then a hash of
every override it sets. The hash is the run's identity, so a rerun of the study finds
the runs that already exist, a renamed row keeps its runs, and a changed row makes
new ones. Format and examples: docs/orchestration.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agegap.errors import AgegapError

STUDY_DIR = Path("studies")
STRATEGIES = ("identity", "image")
# Under k-fold cross-validation the other folds hold about (k-1)/k of each class, too
# few for the usual 1,200 + 600 per class at k = 5: validation gives way, training keeps
# its 1,200. A study or row that sets ``validation_per_class`` itself wins.
CV_VALIDATION_PER_CLASS = 300
IDENTITY_CHARS = 10
_KEYS = {
    "description", "base", "set", "seeds", "split_strategies", "folds", "baseline",
    "default_rows", "rows",
}
_ROW_KEYS = {"name", "description", "set", "reference"}


@dataclass(frozen=True)
class Row:
    """One recipe of a study: its name, every override it sets, and any published figures."""

    name: str
    overrides: dict[str, Any]
    description: str = ""
    reference: dict[str, float] | None = None


@dataclass(frozen=True)
class Study:
    """What a study file declares, with the base merged into each row."""

    name: str
    rows: list[Row]
    seeds: list[int]
    split_strategies: list[str]
    folds: int = 0
    baseline: str | None = None
    description: str = ""
    every_run: dict[str, Any] = field(default_factory=dict)
    default_rows: list[str] = field(default_factory=list)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise AgegapError(f"study {self.name}: no row {name!r}")


@dataclass(frozen=True)
class PlannedRun:
    """One experiment of a study: a row on one split (seed, strategy, fold)."""

    row: str
    seed: int
    strategy: str | None
    fold: int | None
    overrides: dict[str, Any]
    identity: str
    name: str


def study_path(root: Path, study: str) -> Path:
    """``blog`` -> ``studies/blog.yaml``; a path to a file is taken as it is."""
    given = Path(study)
    if given.suffix in (".yaml", ".yml"):
        return given if given.is_absolute() else root / given
    return root / STUDY_DIR / f"{study}.yaml"


def load_study(path: Path) -> Study:
    """Read and check a study file; a one-line error names the file and what is wrong."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgegapError(f"{path}: no such study file") from None
    except yaml.YAMLError as error:
        raise AgegapError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise AgegapError(f"{path}: expected a mapping with 'rows:'")
    if unknown := sorted(set(spec) - _KEYS):
        raise AgegapError(f"{path}: unknown key(s) {', '.join(unknown)}: expected {sorted(_KEYS)}")
    base = _mapping(spec.get("base"), path, "base")
    rows = [_row(entry, index, base, path) for index, entry in enumerate(_rows(spec, path), 1)]
    names = [row.name for row in rows]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise AgegapError(f"{path}: duplicate row names: {', '.join(duplicates)}")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise AgegapError(f"{path}: 'seeds' must be a non-empty list of integers")
    strategies = spec.get("split_strategies", [])
    if not isinstance(strategies, list) or any(s not in STRATEGIES for s in strategies):
        raise AgegapError(f"{path}: 'split_strategies' must be a list of {' or '.join(STRATEGIES)}")
    folds = check_folds(spec.get("folds", 0), f"{path}: 'folds'")
    baseline = spec.get("baseline")
    if baseline is not None and baseline not in names:
        raise AgegapError(f"{path}: baseline {baseline!r} is not a row")
    default_rows = spec.get("default_rows") or []
    if not isinstance(default_rows, list) or any(r not in names for r in default_rows):
        raise AgegapError(f"{path}: 'default_rows' must be a list of the study's row names")
    return Study(
        name=path.stem,
        rows=rows,
        seeds=list(seeds),
        split_strategies=list(strategies),
        folds=folds,
        baseline=baseline,
        description=str(spec.get("description") or ""),
        every_run=_mapping(spec.get("set"), path, "set"),
        default_rows=list(default_rows),
    )


def check_folds(folds: Any, what: str) -> int:
    if not _is_int(folds) or folds == 1 or folds < 0:
        raise AgegapError(f"{what} {folds!r}: must be 0 (no cross-validation) or at least 2")
    return int(folds)


def _rows(spec: Mapping[str, Any], path: Path) -> list[Any]:
    rows = spec.get("rows")
    if not isinstance(rows, list) or not rows:
        raise AgegapError(f"{path}: expected a non-empty list under 'rows:'")
    return rows


def _row(entry: Any, index: int, base: Mapping[str, Any], path: Path) -> Row:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise AgegapError(f"{path}: row {index} needs a 'name'")
    name = entry["name"]
    if unknown := sorted(set(entry) - _ROW_KEYS):
        raise AgegapError(f"{path}: row {name!r}: unknown key(s) {', '.join(unknown)}")
    overrides = {**base, **_mapping(entry.get("set"), path, f"row {name!r}: 'set'")}
    reference = entry.get("reference")
    if reference is not None and not isinstance(reference, dict):
        raise AgegapError(f"{path}: row {name!r}: 'reference' must be a mapping or null")
    return Row(name, overrides, str(entry.get("description") or ""), reference)


def _mapping(value: Any, path: Path, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AgegapError(f"{path}: {what} must be a mapping of params.yaml keys to values")
    return dict(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def select_rows(study: Study, wanted: list[str] | None) -> list[Row]:
    """The rows named in ``wanted``, else the study's ``default_rows``, else every row; in
    the study file's order."""
    wanted = wanted or study.default_rows
    if not wanted:
        return study.rows
    known = [row.name for row in study.rows]
    if unknown := [name for name in wanted if name not in known]:
        raise AgegapError(
            f"--rows: unknown row(s) {', '.join(unknown)} in study {study.name}: "
            f"expected some of {', '.join(known)}"
        )
    return [row for row in study.rows if row.name in wanted]


def run_identity(overrides: Mapping[str, Any]) -> str:
    """A short hash of every override a run sets, whatever their order in the file."""
    text = json.dumps(overrides, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:IDENTITY_CHARS]


def run_name(row: str, strategy: str | None, seed: int, fold: int | None, identity: str) -> str:
    """``<row>-<strategy>-s<seed>[-f<fold>]-<identity>``: a valid git ref, at most 100
    characters, whose readable part may be cut but whose identity never is."""
    parts = [row, strategy or "", f"s{seed}", "" if fold is None else f"f{fold}"]
    readable = "-".join(p for p in parts if p)
    readable = "".join(c if c.isalnum() or c in "_-" else "-" for c in readable).strip("-_")
    return f"{readable[: 99 - len(identity)]}-{identity}"


def identity_of(name: str) -> str | None:
    """The identity at the end of an experiment's name, or None for other experiments."""
    tail = name.rsplit("-", 1)[-1]
    hexadecimal = all(c in "0123456789abcdef" for c in tail)
    return tail if len(tail) == IDENTITY_CHARS and hexadecimal else None


def plan_runs(
    study: Study,
    rows: list[Row],
    *,
    seeds: list[int] | None = None,
    strategies: list[str] | None = None,
    folds: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[PlannedRun]:
    """Every run of ``rows``: seeds x split strategies x folds, in the file's row order.

    A run sets ``seed`` and ``split_seed`` to its seed, ``split_strategy`` (unless the
    study leaves it to params.yaml), ``cv_folds``/``cv_fold`` under cross-validation,
    the study's ``set`` and then ``extra`` (the command line's ``--epochs``) on top of
    its row.
    """
    folds = study.folds if folds is None else folds
    runs: list[PlannedRun] = []
    for row in rows:
        for strategy in (strategies or study.split_strategies) or [None]:
            for seed in seeds if seeds is not None else study.seeds:
                for fold in range(folds) if folds else [None]:
                    overrides = {**row.overrides, **study.every_run, **(extra or {})}
                    overrides.update(seed=seed, split_seed=seed)
                    if strategy is not None:
                        overrides["split_strategy"] = strategy
                    if fold is not None:
                        overrides.update(cv_folds=folds, cv_fold=fold)
                        overrides.setdefault("validation_per_class", CV_VALIDATION_PER_CLASS)
                    identity = run_identity(overrides)
                    name = run_name(row.name, strategy, seed, fold, identity)
                    runs.append(
                        PlannedRun(row.name, seed, strategy, fold, overrides, identity, name)
                    )
    return runs


def runs_to_make(runs: list[PlannedRun], done: Collection[str]) -> list[PlannedRun]:
    """The runs whose identity has no finished experiment in ``done``, one per identity:
    rows that set the same params (the blog's ``batch-16`` is its ``dropout-0.1``) share
    one experiment instead of training the same network twice."""
    first: dict[str, PlannedRun] = {}
    for run in runs:
        if run.identity not in done:
            first.setdefault(run.identity, run)
    return list(first.values())
