"""Outputs that appear whole or not at all: each is built beside its target and renamed
into place, so a stage killed halfway leaves nothing half-written to be taken for real.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agegap.errors import AgegapError

# A full disk or an exhausted quota: the user's to fix, so one line and not a traceback.
_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _out_of_space(error: OSError, target: Path, staging: Path) -> AgegapError | None:
    """The one-line error for a write that ran out of space, or None for any other error.

    Names the file being written (as it would be called in ``target``, not in the
    staging copy) where the error knows it, else ``target``; the old output is kept.
    """
    if error.errno not in _OUT_OF_SPACE:
        return None
    written = Path(os.fsdecode(error.filename)) if error.filename else target
    with contextlib.suppress(ValueError):
        written = target / Path(os.path.abspath(written)).relative_to(os.path.abspath(staging))
    reason = os.strerror(error.errno).lower()
    kept = "left as it was" if written == target else f"{target} left as it was"
    return AgegapError(f"{written}: {reason} while writing; {kept} (free some space, run again)")


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an ``OSError`` raised inside the block ``path`` as its file name, if it has none.

    A write that fills the disk fails without saying which file it was writing (Pillow,
    matplotlib and pandas write through open files); the error message should.
    """
    try:
        yield
    except OSError as error:
        error.filename = error.filename or str(path)
        raise


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and (clear := _out_of_space(error, target, staging)):
            raise clear from None
        raise
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.exists() or target.is_symlink():
            target.unlink()
        os.replace(staging, target)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary file path beside ``target`` (same suffix); on success it replaces it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
    except BaseException as error:
        staging.unlink(missing_ok=True)
        if isinstance(error, OSError) and (clear := _out_of_space(error, target, staging)):
            raise clear from None
        raise
    os.replace(staging, target)


def write_text(target: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as staging:
        staging.write_text(text, encoding="utf-8")


def json_text(data: Any, *, allow_nan: bool = True) -> str:
    """``data`` as indented, key-sorted JSON (stable diffs in git), newline-terminated.

    ``allow_nan=False`` refuses NaN and infinities, which are not JSON and which
    ``dvc metrics`` and most parsers reject: pass the data through :func:`finite` first.
    """
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=allow_nan)
    return text + "\n"


def write_json(target: Path | str, data: Any, *, allow_nan: bool = True) -> None:
    """Write :func:`json_text` of ``data`` to ``target`` atomically."""
    write_text(target, json_text(data, allow_nan=allow_nan))


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float (in dicts and lists too) turned into None.

    An undefined score, such as the ROC AUC of a one-class test split, is ``null`` in
    JSON, never ``NaN``.
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data
