"""Running git from the flows: one function, so every git error reads the same."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agegap.errors import AgegapError


def git(root: Path, *args: str) -> str:
    """``git args`` in ``root``; its stdout, or a one-line error with git's own last line."""
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode:
        last = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise AgegapError(f"git {' '.join(args)} in {root}: {last[-1]}")
    return result.stdout.strip()


def head_commit(root: Path) -> str:
    """The commit checked out in ``root``: the one a study's experiments belong to."""
    return git(root, "rev-parse", "HEAD")
