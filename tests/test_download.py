"""The download stage: local, file:// and HTTP sources, safe extraction, the manifest."""

from __future__ import annotations

import http.server
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from agegap import fetch
from agegap.errors import AgegapError
from agegap.fetch import sha256_of_file
from agegap.lag import read_manifest
from agegap.layout import RAW_DIR
from agegap.params import Params
from stages.download import download
from tests.synthetic import NON_ASCII_IDENTITY, SPACED_FILE, make_archive


def params_for(url: str | Path, sha256: str = "") -> Params:
    return Params(data_url=str(url), data_sha256=sha256)


def test_local_zip_is_extracted_with_manifest_and_report(tmp_path: Path, synthetic_zip) -> None:
    report = download(params_for(synthetic_zip.path), tmp_path)
    raw = tmp_path / RAW_DIR
    manifest = read_manifest(raw / "manifest.csv")
    assert report["decoded"] == synthetic_zip.decoded
    assert report["identities"] == synthetic_zip.identities
    assert report["excluded"] == len(synthetic_zip.excluded)
    excluded = {row.path.removeprefix("images/"): row.reason for row in
                manifest[manifest["status"] == "excluded"].itertuples()}
    assert set(excluded) == set(synthetic_zip.excluded)
    assert "truncated" in " ".join(excluded.values()) or "decode" in " ".join(excluded.values())
    assert any("0 bytes" in reason for reason in excluded.values())
    assert any("not an image" in reason for reason in excluded.values())
    assert report["duplicate_images"] == synthetic_zip.duplicates
    assert report["ignored_files_outside_identity_folders"] == ["README.txt"]
    # non-ASCII and spaced names survive, on disk and in the manifest
    assert (raw / "images" / NON_ASCII_IDENTITY / "y").is_dir()
    assert NON_ASCII_IDENTITY in set(manifest["identity"])
    assert any(path.endswith(SPACED_FILE) for path in manifest["path"])
    assert all((raw / path).is_file() for path in manifest["path"])
    ok = manifest[manifest["status"] == "ok"]
    assert set(ok["label"]) == {"old", "young"}
    assert (ok["width"] == 32).all() and (ok["mode"] == "RGB").all()
    assert all(len(digest) == 64 for digest in manifest["sha256"])


@pytest.mark.parametrize(("fmt", "top"), [("tar.gz", None), ("zip", "LAGdataset_100")])
def test_tar_and_one_top_folder_are_found(tmp_path: Path, fmt: str, top: str | None) -> None:
    archive = make_archive(tmp_path / f"lag.{fmt}", fmt=fmt, top_folder=top)
    report = download(params_for(archive.path), tmp_path / "out")
    assert report["decoded"] == archive.decoded


def test_file_url_and_relative_path_and_checksum(tmp_path: Path, synthetic_zip) -> None:
    digest = sha256_of_file(synthetic_zip.path)
    download(params_for(synthetic_zip.path.as_uri(), digest), tmp_path / "a")
    relative = Path("archives") / synthetic_zip.path.name
    download(params_for(relative, digest), synthetic_zip.path.parent.parent)
    assert (synthetic_zip.path.parent.parent / RAW_DIR / "manifest.csv").is_file()


def assert_nothing_written(root: Path) -> None:
    raw = root / RAW_DIR
    assert not raw.exists()
    leftovers = list(raw.parent.glob(".raw.*")) if raw.parent.exists() else []
    assert not leftovers


def test_missing_file_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(AgegapError, match="no such file") as caught:
        download(params_for(tmp_path / "nope.zip"), tmp_path)
    assert "\n" not in str(caught.value)
    assert_nothing_written(tmp_path)


def test_wrong_checksum_is_refused(tmp_path: Path, synthetic_zip) -> None:
    with pytest.raises(AgegapError, match=r"SHA-256 is .* but data_sha256 expects"):
        download(params_for(synthetic_zip.path, "0" * 64), tmp_path)
    assert_nothing_written(tmp_path)


def _zip_with(tmp_path: Path, name: str) -> Path:
    target = tmp_path / "evil.zip"
    with zipfile.ZipFile(target, "w") as bundle:
        bundle.writestr("person/y/a.png", b"x")
        bundle.writestr(name, b"owned")
    return target


@pytest.mark.parametrize("name", ["../escaped.png", "/etc/agegap-owned", "person/../../up.png"])
def test_zip_slip_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(AgegapError, match="refusing member"):
        download(params_for(_zip_with(tmp_path, name)), tmp_path / "out")
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "up.png").exists()
    assert_nothing_written(tmp_path / "out")


def test_tar_links_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "links.tar.gz"
    with tarfile.open(target, "w:gz") as bundle:
        link = tarfile.TarInfo("person/y/passwd.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        bundle.addfile(link)
    with pytest.raises(AgegapError, match="refusing link member"):
        download(params_for(target), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_archive_without_lag_layout_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "flat.zip"
    with zipfile.ZipFile(target, "w") as bundle:
        bundle.writestr("a/one.png", b"x")
        bundle.writestr("b/two.png", b"x")
    with pytest.raises(AgegapError, match="not the LAG layout"):
        download(params_for(target), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "data.zip"
    target.write_bytes(b"plain text, not a zip")
    with pytest.raises(AgegapError, match="not a zip or tar archive"):
        download(params_for(target), tmp_path / "out")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_url_names_it_and_suggests_a_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    url = f"http://127.0.0.1:{_free_port()}/LAGdataset_100.zip"
    with pytest.raises(AgegapError) as caught:
        download(params_for(url), tmp_path)
    message = str(caught.value)
    assert url in message and "unreachable" in message and "data_url" in message
    assert "\n" not in message
    assert_nothing_written(tmp_path)
    assert not list((tmp_path / "data" / "downloads").glob("*[!t]"))  # only a .part, if any


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file, honouring ``Range: bytes=N-`` as a resumable server does."""

    payload = b""
    requests_seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        requested = self.headers.get("Range")
        type(self).requests_seen.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested else 0
        body = self.payload[start:]
        self.send_response(206 if requested else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_archive(synthetic_zip) -> Iterator[str]:
    _RangeHandler.payload = synthetic_zip.path.read_bytes()
    _RangeHandler.requests_seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/LAGdataset_100.zip"
    finally:
        server.shutdown()
        server.server_close()


def test_http_download_resumes_a_partial_file(tmp_path: Path, http_archive: str) -> None:
    payload = _RangeHandler.payload
    cached = fetch.cached_download_path(http_archive, tmp_path / "data" / "downloads")
    cached.parent.mkdir(parents=True)
    partial = cached.with_name(cached.name + ".part")
    partial.write_bytes(payload[: len(payload) // 3])
    digest = fetch.hashlib.sha256(payload).hexdigest()
    report = download(params_for(http_archive, digest), tmp_path)
    assert _RangeHandler.requests_seen == [f"bytes={len(payload) // 3}-"]
    assert cached.read_bytes() == payload and not partial.exists()
    assert report["decoded"]["old"] > 0
    # a second run reuses the finished download
    download(params_for(http_archive, digest), tmp_path)
    assert len(_RangeHandler.requests_seen) == 1


@pytest.mark.slow
@pytest.mark.real_data
def test_real_archive(tmp_path: Path, real_archive: Path) -> None:
    report = download(params_for(real_archive), tmp_path)
    assert report["identities"] == 1010
    assert report["decoded"] == {"old": 1908, "young": 1908}
    assert report["excluded"] == 0
    assert report["duplicate_images"] == 6
    manifest = read_manifest(tmp_path / RAW_DIR / "manifest.csv")
    assert any(not identity.isascii() for identity in manifest["path"])
