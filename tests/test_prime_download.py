"""A local copy of the archive feeds ``download`` without editing ``data_url``."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from agegap import fetch
from agegap.errors import AgegapError
from agegap.params import Params
from tests.conftest import REPO

OFFICIAL = Params().data_url


def no_network(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the primed cache must be used, not the network")


def test_a_primed_copy_is_what_download_uses(
    tmp_path: Path, synthetic_zip, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "downloads"
    digest = hashlib.sha256(synthetic_zip.path.read_bytes()).hexdigest()
    cached, reported = fetch.prime_download_cache(synthetic_zip.path, OFFICIAL, digest, cache)
    assert reported == digest
    assert cached.read_bytes() == synthetic_zip.path.read_bytes()
    assert [p.name for p in cache.iterdir()] == [cached.name]  # nothing staged left behind
    monkeypatch.setattr(fetch, "download", no_network)
    assert fetch.obtain_archive(OFFICIAL, "", tmp_path, cache) == cached
    assert fetch.obtain_archive(OFFICIAL, digest, tmp_path, cache) == cached


def test_a_copy_with_the_wrong_checksum_is_refused(tmp_path: Path, synthetic_zip) -> None:
    with pytest.raises(AgegapError, match=r"SHA-256 is [0-9a-f]{64}, but 0{64} was expected"):
        fetch.prime_download_cache(synthetic_zip.path, OFFICIAL, "0" * 64, tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no such file"), (b"not a zip", "not a zip archive")]
)
def test_a_missing_or_foreign_file_is_refused(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    source = tmp_path / "LAGdataset_100.zip"
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(AgegapError, match=message):
        fetch.prime_download_cache(source, OFFICIAL, "", tmp_path / "cache")


def test_priming_for_a_local_data_url_says_there_is_nothing_to_do(
    tmp_path: Path, synthetic_zip
) -> None:
    with pytest.raises(AgegapError, match="is a local file already"):
        fetch.prime_download_cache(synthetic_zip.path, "data/x.zip", "", tmp_path / "cache")


def test_the_command_primes_the_project_cache_and_prints_the_checksum(
    tmp_path: Path, synthetic_zip
) -> None:
    (tmp_path / "params.yaml").write_text(f"data_url: {OFFICIAL}\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "agegap.cli", "prime-download", str(synthetic_zip.path)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(synthetic_zip.path.read_bytes()).hexdigest()
    assert digest in done.stdout
    cached = fetch.cached_download_path(OFFICIAL, tmp_path / "data" / "downloads")
    assert cached.read_bytes() == synthetic_zip.path.read_bytes()
    refused = subprocess.run(
        [sys.executable, "-m", "agegap.cli", "prime-download", str(tmp_path / "absent.zip")],
        cwd=tmp_path, capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert refused.returncode == 1
    missing = tmp_path / "absent.zip"
    assert refused.stderr.strip().splitlines() == [f"error: {missing}: no such file"]
