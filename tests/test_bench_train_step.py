"""bench/train_step.py: one short real run of this checkout against a revision, and its
one-line error for a revision git does not know."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench" / "train_step.py"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_an_unknown_revision_is_one_line() -> None:
    result = run_bench("--against", "no-such-revision", "--rounds", "1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: --against no-such-revision: ")


@pytest.mark.slow
def test_a_short_run_times_both_sides() -> None:
    """A few images per epoch, against HEAD: both sides train in their own process and the
    speed-ups are printed; the figures themselves are not checked (timings vary)."""
    result = run_bench("--against", "HEAD", "--rounds", "1", "--epochs", "2",
                       "--images", "32", "--row", "blog+cutout")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "round 1: this checkout " in result.stdout
    for measure in ("images/s", "CPU time per image"):
        assert f"this checkout's speed-up over HEAD, {measure}: median " in result.stdout
