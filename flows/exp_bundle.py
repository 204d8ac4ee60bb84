"""A study's experiments kept in a file: a git bundle of their refs.

DVC keeps each experiment as a git ref (``refs/exps/...``) in the clone that ran or
pulled it, and a git remote is how they are shared. Where no remote outlives the clone,
``--bundle FILE`` keeps them in the repository itself: the study fetches the bundle's
experiments before it starts (those runs count as done) and writes every finished run
of the study back into it at the end. Commit the file; ``git fetch FILE
'refs/exps/*:refs/exps/*'`` brings the experiments into any clone for ``dvc exp show``.
The bundle holds only what the study's commit lacks (params, metrics, curves, lock
files), so it stays small; models and data stay in the DVC cache or remote.
"""

from __future__ import annotations

from pathlib import Path

from agegap.atomic import atomic_path
from agegap.errors import AgegapError
from flows.git_commands import git

REFS = "refs/exps"


def restore(root: Path, bundle: Path) -> int:
    """Fetch the bundle's experiments into ``root`` (none when it does not exist yet);
    how many refs it holds."""
    if not bundle.is_file():
        return 0
    git(root, "bundle", "verify", "--quiet", str(bundle))
    git(root, "fetch", "--quiet", "--force", str(bundle), f"{REFS}/*:{REFS}/*")
    return len(git(root, "bundle", "list-heads", str(bundle)).splitlines())


def experiment_refs(root: Path, commit: str, names: set[str]) -> list[str]:
    """The refs of the experiments named ``names`` whose baseline is ``commit``
    (DVC files them as ``refs/exps/<2 hex>/<38 hex>/<name>``)."""
    prefix = f"{REFS}/{commit[:2]}/{commit[2:]}/"
    listed = git(root, "for-each-ref", "--format=%(refname)", prefix).splitlines()
    return [ref for ref in listed if ref.removeprefix(prefix) in names]


def save(root: Path, bundle: Path, commit: str, names: set[str]) -> int:
    """Write the finished experiments named ``names`` of ``commit`` to ``bundle`` (an
    earlier bundle's other refs are kept); how many it holds. Nothing half-written."""
    kept = experiment_refs(root, commit, names)
    if bundle.is_file():
        earlier = [line.split()[-1] for line in
                   git(root, "bundle", "list-heads", str(bundle)).splitlines()]
        kept = sorted({*kept, *(ref for ref in earlier if git_has(root, ref))})
    if not kept:
        return 0
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(bundle) as staging:
        git(root, "bundle", "create", "--quiet", str(staging), *kept, "--not", commit)
    return len(kept)


def git_has(root: Path, ref: str) -> bool:
    try:
        git(root, "rev-parse", "--verify", "--quiet", ref)
    except AgegapError:  # not in this clone
        return False
    return True
