"""What ``python -m flows.experiments STUDY --pool`` refuses before it submits anything:
a commit the workers cannot fetch, and a Prefect server only this process would see."""

from __future__ import annotations

from pathlib import Path

import pytest

from agegap.errors import AgegapError
from flows.pool_runs import check_commit_is_shared
from tests.conftest import run


def test_a_commit_must_be_on_the_git_remote_before_workers_can_run_it(tmp_path: Path) -> None:
    origin, clone = tmp_path / "origin.git", tmp_path / "clone"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    (clone / "a.txt").write_text("one\n", encoding="utf-8")
    run(["git", "add", "a.txt"], clone)
    run(["git", "commit", "-q", "-m", "one"], clone)
    with pytest.raises(AgegapError, match="is not on git remote 'origin': push it first"):
        check_commit_is_shared(clone, "origin")
    run(["git", "push", "-q", "origin", "main"], clone)
    head = run(["git", "rev-parse", "HEAD"], clone).stdout.strip()
    assert check_commit_is_shared(clone, "origin") == head
    with pytest.raises(AgegapError, match="git fetch --quiet elsewhere"):
        check_commit_is_shared(clone, "elsewhere")


def test_the_pool_needs_a_server_the_workers_share() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.experiments import require_shared_server

    missing = pytest.raises(AgegapError, match="--pool needs the Prefect server the workers use")
    with temporary_settings(updates={PREFECT_API_URL: None}), missing:
        require_shared_server()
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        require_shared_server()
