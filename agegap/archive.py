"""Safe extraction of zip and tar archives, and finding the LAG layout inside.

An archive is untrusted input: a member named ``../../.bashrc`` or ``/etc/passwd``, or
a link pointing outside, would write anywhere on disk (zip-slip). Every member is
checked before a single byte is written.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from agegap.errors import AgegapError

IGNORED_TOP_LEVEL = {"__MACOSX"}


def _zip_member_name(info: zipfile.ZipInfo) -> str:
    """The member's real name: LAG's zip stores UTF-8 names without the UTF-8 flag."""
    name = info.filename
    if not info.flag_bits & 0x800:
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            name = name.encode("cp437").decode("utf-8")
    return name


def _safe_relative(name: str, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the extraction folder, or an error if it escapes."""
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise AgegapError(f"{archive}: refusing member with an absolute path: {name!r}")
    if ".." in path.parts:
        raise AgegapError(f"{archive}: refusing member that escapes the folder: {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def extract_archive(archive: Path, destination: Path) -> None:
    """Extract a zip, tar, tar.gz/tgz (or tar.bz2/xz) into ``destination``, refusing any
    absolute path, ``..`` component, link or device member."""
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, destination)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, destination)
    else:
        raise AgegapError(f"{archive}: not a zip or tar archive")


def _extract_zip(archive: Path, destination: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = []
            for info in bundle.infolist():
                relative = _safe_relative(_zip_member_name(info), archive)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise AgegapError(f"{archive}: refusing symbolic link member {info.filename!r}")
                if relative is not None:
                    members.append((info, relative))
            for info, relative in members:
                target = destination.joinpath(*relative.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except zipfile.BadZipFile as error:
        raise AgegapError(f"{archive}: corrupt zip archive ({error})") from None


def _extract_tar(archive: Path, destination: Path) -> None:
    try:
        with tarfile.open(archive) as bundle:
            members = bundle.getmembers()
            for member in members:
                _safe_relative(member.name, archive)
                if member.issym() or member.islnk():
                    raise AgegapError(f"{archive}: refusing link member {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise AgegapError(f"{archive}: refusing special file member {member.name!r}")
            for member in members:
                relative = _safe_relative(member.name, archive)
                if relative is None:
                    continue
                target = destination.joinpath(*relative.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = bundle.extractfile(member)
                if source is None:
                    continue
                with source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except tarfile.TarError as error:
        raise AgegapError(f"{archive}: corrupt tar archive ({error})") from None


def _looks_like_lag_root(folder: Path) -> bool:
    return any(
        child.is_dir() and (child / "y").is_dir()
        for child in folder.iterdir()
        if child.name not in IGNORED_TOP_LEVEL
    )


def find_lag_root(extracted: Path, archive_name: str) -> Path:
    """The folder holding the identity folders: the archive's root (as in the official
    zip) or a single top folder, which some re-packed copies add."""
    folder = extracted
    for _ in range(3):
        if _looks_like_lag_root(folder):
            return folder
        subfolders = [
            c for c in folder.iterdir() if c.is_dir() and c.name not in IGNORED_TOP_LEVEL
        ]
        if len(subfolders) != 1:
            break
        folder = subfolders[0]
    raise AgegapError(
        f"{archive_name}: not the LAG layout: expected identity folders, each with a 'y/' "
        "subfolder of young images, at the archive's root or under one top folder"
    )
