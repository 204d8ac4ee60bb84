"""Get the LAG archive from a URL or a local path, verified and never half-written.

Downloads resume and retry, and fail with one line that says how to use a local copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import urllib.parse
import zipfile
from collections.abc import Callable
from pathlib import Path

import requests
from tqdm import tqdm

from agegap.atomic import atomic_path
from agegap.errors import AgegapError

# Finished downloads, kept out of git and DVC so that a re-run need not fetch again.
DOWNLOAD_CACHE = Path("data/downloads")
CHUNK_BYTES = 1 << 20
RETRIES = 3
BACKOFF_S = 1.0  # doubled after each failed try
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


def sha256_of_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def is_remote(url: str) -> bool:
    """True for http(s) URLs, which are downloaded; anything else is a local file."""
    return urllib.parse.urlsplit(url).scheme.lower() in ("http", "https")


def local_path(url: str, root: Path) -> Path:
    """Resolve a ``file://`` URL or a path (relative to ``root``, the repo) to a file."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise AgegapError(
            f"data_url={url!r}: unsupported scheme {parts.scheme!r}; "
            "use http(s)://, file:// or a path"
        )
    path = Path(url).expanduser()
    return path if path.is_absolute() else root / path


def verify_sha256(path: Path, expected: str, url: str) -> None:
    """Raise unless ``path`` hashes to ``expected`` (an empty ``expected`` skips the check)."""
    if not expected:
        return
    actual = sha256_of_file(path)
    if actual != expected:
        raise AgegapError(
            f"{url}: SHA-256 is {actual}, but data_sha256 expects {expected}: "
            "the file is corrupt or another version; fix data_sha256 or the file"
        )


def download(
    url: str,
    destination: Path,
    *,
    retries: int | None = None,
    backoff_s: float | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Stream ``url`` to ``destination``, resuming a ``.part`` file left by an earlier try.

    The bytes go to ``destination.part`` and are renamed only once complete, so a
    killed download never looks finished; the next call asks the server for the rest
    (HTTP Range) and starts over where the server does not allow it.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    retries = RETRIES if retries is None else retries
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    partial = destination.with_name(destination.name + ".part")
    session = session or requests.Session()
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _fetch_once(url, partial, session)
            os.replace(partial, destination)
            return destination
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                partial.unlink(missing_ok=True)
                raise AgegapError(
                    f"{url}: the server answered HTTP {status}; {_offline_hint()}"
                ) from None
            last_error = error
        except (requests.ConnectionError, requests.Timeout, _IncompleteError) as error:
            last_error = error
    reason = _short_reason(last_error)
    raise AgegapError(f"{url}: unreachable after {retries + 1} tries ({reason}); {_offline_hint()}")


class _IncompleteError(Exception):
    """The server closed the connection before sending all it announced."""


def _fetch_once(url: str, partial: Path, session: requests.Session) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and have:  # our partial file is already whole
            return
        response.raise_for_status()
        resumed = have and response.status_code == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with (
            partial.open("ab" if resumed else "wb") as stream,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=Path(urllib.parse.urlsplit(url).path).name or url,
                disable=None,
            ) as progress,
        ):
            for chunk in response.iter_content(CHUNK_BYTES):
                stream.write(chunk)
                progress.update(len(chunk))
        if total is not None and partial.stat().st_size < total:
            raise _IncompleteError(f"got {partial.stat().st_size} of {total} bytes")


def _short_reason(error: Exception | None) -> str:
    if error is None:
        return "no answer"
    if isinstance(error, requests.ConnectionError):
        return "connection failed"
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    return str(error).splitlines()[0][:120]


def _offline_hint() -> str:
    return (
        "to use a local copy, set data_url to its path, e.g. "
        "`dvc exp run -S data_url=../shared/datasets/LAGdataset_100.zip` or edit params.yaml"
    )


def cached_download_path(url: str, cache_dir: Path) -> Path:
    """Where a finished download of ``url`` is kept, so a re-run need not fetch it again."""
    name = Path(urllib.parse.urlsplit(url).path).name or "archive"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    return cache_dir / f"{key}-{name}"


def obtain_archive(url: str, expected_sha256: str, root: Path, cache_dir: Path) -> Path:
    """Return a verified local file for ``url``: the file itself, or a (cached) download."""
    if is_remote(url):
        path = cached_download_path(url, cache_dir)
        if not path.exists():
            download(url, path)
        try:
            verify_sha256(path, expected_sha256, url)
        except AgegapError:
            path.unlink()  # a bad download must not be reused: the next run fetches anew
            raise
        return path
    path = local_path(url, root)
    if not path.is_file():
        raise AgegapError(f"data_url={url!r}: no such file ({path})")
    verify_sha256(path, expected_sha256, url)
    return path


def prime_download_cache(
    source: Path, url: str, expected_sha256: str, cache_dir: Path
) -> tuple[Path, str]:
    """Copy a local archive to where ``download`` keeps a finished download of ``url``.

    So a machine without access to the official server runs the pipeline with
    ``data_url`` unchanged (and the committed ``dvc.lock`` still matching), from a copy
    it already has. Returns the cached file and the copy's SHA-256, checked against
    ``expected_sha256`` when one is given.
    """
    if not is_remote(url):
        raise AgegapError(f"data_url={url!r} is a local file already: nothing to prime")
    if not source.is_file():
        raise AgegapError(f"{source}: no such file")
    if not zipfile.is_zipfile(source):
        raise AgegapError(f"{source}: not a zip archive")
    digest = sha256_of_file(source)
    if expected_sha256 and digest != expected_sha256.lower():
        raise AgegapError(
            f"{source}: SHA-256 is {digest}, but {expected_sha256} was expected: "
            "another version of the archive, or a corrupt copy"
        )
    target = cached_download_path(url, cache_dir)
    with atomic_path(target) as staged:
        shutil.copyfile(source, staged)
    return target, digest
