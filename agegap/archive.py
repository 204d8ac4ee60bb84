"""Safe extraction of zip and tar archives, and finding the LAG layout inside.

An archive is untrusted input: every member is checked before a byte is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from agegap.errors import AgegapError

IGNORED_TOP_LEVEL = {"__MACOSX"}
NAME_MAX = 255  # bytes in one file or folder name on Linux file systems


@dataclass(frozen=True)
class Unwritten:
    """A member left out of the extraction because its name cannot be a file here."""

    path: PurePosixPath  # relative to the extraction folder
    sha256: str
    reason: str


def _too_long(relative: PurePosixPath) -> str:
    """Why ``relative`` cannot be created on a Linux file system, or ``""`` if it can.

    Decided by the name alone, not by trying, so the manifest is the same on every
    machine.
    """
    longest = max(relative.parts, key=lambda part: len(os.fsencode(part)))
    size = len(os.fsencode(longest))
    if size <= NAME_MAX:
        return ""
    return f"name too long to extract ({size} bytes in one name; at most {NAME_MAX})"


def _digest(open_member: Callable[[], IO[bytes]]) -> str:
    digest = hashlib.sha256()
    with open_member() as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _make_folder(relative: PurePosixPath, destination: Path) -> None:
    """Create a folder member; one whose name is too long is skipped (its files say why)."""
    if _too_long(relative):
        return
    try:
        destination.joinpath(*relative.parts).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise


def _write_member(
    open_member: Callable[[], IO[bytes]], relative: PurePosixPath, destination: Path
) -> Unwritten | None:
    """Copy one member to its place under ``destination``, or say why its name can't be.

    A file system with a shorter limit than :data:`NAME_MAX` (eCryptfs: 143) is caught
    when the file is created.
    """
    reason = _too_long(relative)
    if not reason:
        target = destination.joinpath(*relative.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_member() as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            return None
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            reason = "name too long for this file system"
    return Unwritten(relative, _digest(open_member), reason)


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


def extract_archive(archive: Path, destination: Path) -> list[Unwritten]:
    """Extract a zip, tar, tar.gz/tgz (or tar.bz2/xz) into ``destination``, refusing any
    absolute path, ``..`` component, link or device member.

    Returns the files left out because their names are too long (see the module's doc).
    """
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, destination)
    if tarfile.is_tarfile(archive):
        return _extract_tar(archive, destination)
    raise AgegapError(f"{archive}: not a zip or tar archive")


def _extract_zip(archive: Path, destination: Path) -> list[Unwritten]:
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
            unwritten = []
            for info, relative in members:
                if info.is_dir():
                    _make_folder(relative, destination)
                    continue
                left_out = _write_member(lambda info=info: bundle.open(info), relative, destination)
                if left_out:
                    unwritten.append(left_out)
            return unwritten
    except zipfile.BadZipFile as error:
        raise AgegapError(f"{archive}: corrupt zip archive ({error})") from None


def _extract_tar(archive: Path, destination: Path) -> list[Unwritten]:
    try:
        with tarfile.open(archive) as bundle:
            members = bundle.getmembers()
            for member in members:
                _safe_relative(member.name, archive)
                if member.issym() or member.islnk():
                    raise AgegapError(f"{archive}: refusing link member {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise AgegapError(f"{archive}: refusing special file member {member.name!r}")
            unwritten = []
            for member in members:
                relative = _safe_relative(member.name, archive)
                if relative is None:
                    continue
                if member.isdir():
                    _make_folder(relative, destination)
                    continue
                left_out = _write_member(
                    lambda member=member: bundle.extractfile(member), relative, destination
                )
                if left_out:
                    unwritten.append(left_out)
            return unwritten
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
