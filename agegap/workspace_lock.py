"""One training at a time per workspace, so two never write the same outputs: an exclusive
``flock`` that the kernel frees when its holder dies (docs/design.md says why).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agegap.errors import AgegapError

WAIT_S = 60.0
POLL_S = 0.5
COMMAND_CHARS = 160
_HELD: dict[Path, int] = {}


def lock_path(name: str, root: Path = Path(".")) -> Path:
    """``<root>/.dvc/tmp/agegap-<name>.lock``: beside DVC's own locks, ignored by git.

    Outside a DVC repository (a stage run by hand in a bare folder) the file sits in the
    root itself, so no ``.dvc`` folder is made that would pass for a repository.
    """
    folder = root / ".dvc" / "tmp" if (root / ".dvc").is_dir() else root
    return (folder / f"agegap-{name}.lock").absolute()


def holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it: ``PID <n>: <command>``."""
    with contextlib.suppress(OSError):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        pid, _, command = text.partition(" ")
        if pid.isdigit():
            return f"PID {pid}: {command}" if command else f"PID {pid}"
    return "PID unknown"


def hold(
    name: str,
    root: Path = Path("."),
    *,
    wait_s: float = WAIT_S,
    on_wait: Callable[[str], None] | None = None,
) -> Path:
    """Take the workspace's ``name`` lock for the rest of this process's life.

    Waits up to ``wait_s`` for another holder (telling ``on_wait`` once, by default
    stderr), then raises :class:`AgegapError` naming it. Taking a lock this process
    already holds does nothing.
    """
    path = lock_path(name, root)
    if path in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise AgegapError(
                    f"another {name} ({holder(path)}) still holds {path} after {wait_s:.0f} s;"
                    " let it finish or stop it, then run again"
                ) from None
            if not told:
                told = True
                message = (
                    f"{name}: another {name} ({holder(path)}) is writing this workspace;"
                    f" waiting up to {wait_s:.0f} s for it to end"
                )
                (on_wait or _to_stderr)(message)
            time.sleep(POLL_S)
    # Who holds it, for the message of the next one that waits (the kernel keeps the lock).
    os.ftruncate(fd, 0)
    command = " ".join(" ".join(sys.orig_argv).split())[:COMMAND_CHARS]  # one line
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
    _HELD[path] = fd
    return path


def release(path: Path) -> None:
    """Give back a lock taken with :func:`hold` (a process that exits needs not)."""
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
