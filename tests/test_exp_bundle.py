"""A study's experiments kept in a git bundle: written with only what the study's commit
lacks, fetched back into a fresh clone whole, and written again without losing any."""

from __future__ import annotations

from pathlib import Path

from flows.exp_bundle import experiment_refs, restore, save
from flows.git_commands import git
from tests.conftest import run


def experiment(repo: Path, commit: str, name: str, text: str) -> str:
    """An experiment as DVC files it: a commit on top of ``commit``, under refs/exps."""
    (repo / "metrics.json").write_text(text, encoding="utf-8")
    run(["git", "add", "metrics.json"], repo)
    tree = git(repo, "write-tree")
    # Through run(): its environment names a committer where git has none configured.
    child = run(["git", "commit-tree", tree, "-p", commit, "-m", name], repo).stdout.strip()
    run(["git", "reset", "-q", "--hard", commit], repo)
    ref = f"refs/exps/{commit[:2]}/{commit[2:]}/{name}"
    run(["git", "update-ref", ref, child], repo)
    return ref


def test_experiments_travel_in_a_bundle(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    (repo / "params.yaml").write_text("dropout: 0.1\n", encoding="utf-8")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "study"], repo)
    commit = git(repo, "rev-parse", "HEAD")
    a = experiment(repo, commit, "a-image-s0-0123456789", '{"accuracy": 0.8}')
    experiment(repo, commit, "not-ours", '{"accuracy": 0.5}')
    assert experiment_refs(repo, commit, {"a-image-s0-0123456789"}) == [a]

    bundle = repo / "reports" / "studies" / "trial.bundle"
    assert save(repo, bundle, commit, {"a-image-s0-0123456789"}) == 1
    objects = git(repo, "bundle", "list-heads", str(bundle))
    assert objects.split() == [git(repo, "rev-parse", a), a]

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert restore(clone, tmp_path / "absent.bundle") == 0
    assert restore(clone, bundle) == 1
    assert git(clone, "show", f"{a}:metrics.json") == '{"accuracy": 0.8}'

    # A second study's run joins the bundle; the first one's stays.
    b = experiment(clone, commit, "b-image-s0-abcdef0123", '{"accuracy": 0.9}')
    assert save(clone, bundle, commit, {"b-image-s0-abcdef0123"}) == 2
    heads = git(clone, "bundle", "list-heads", str(bundle))
    assert a in heads and b in heads
