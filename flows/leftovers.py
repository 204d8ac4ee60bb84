"""The DVC commands a killed flow run left behind: recorded while they run, stopped later.

The next flow run on the workspace stops them once it holds the lock (docs/orchestration.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from agegap.orphans import group_members, is_alive, start_time

RECORDS = Path(".dvc") / "tmp" / "agegap-flow-commands"
STOP_WAITS_S = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))
# An orphan's zombie lasts until init reaps it (seconds, on some machines), and DVC
# takes any PID that still exists for a live holder of its locks ("… is busy").
REAP_WAIT_S = 10.0


def record(workspace: Path, group: int, args: list[str]) -> Path | None:
    """Note that this process runs ``dvc <args>`` as process group ``group`` in ``workspace``.

    Best effort: a workspace that cannot take the note still runs the command.
    """
    if not (workspace / ".dvc").is_dir():
        return None
    path = workspace / RECORDS / f"{group}.json"
    note = {
        "owner": os.getpid(),
        "owner_started": start_time(os.getpid()),
        "group": group,
        "started": start_time(group),
        "command": "dvc " + " ".join(args),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(note), encoding="utf-8")
    except OSError:
        return None
    return path


def forget(path: Path | None) -> None:
    """Drop a note once its command has ended."""
    if path is not None:
        path.unlink(missing_ok=True)


def stop_leftovers(workspace: Path, on_stop: Callable[[str], None] | None = None) -> list[str]:
    """Stop the recorded DVC commands whose flow run died; their commands, for the log.

    A note whose flow run still runs is left alone: that run will end its command and
    drop the note itself.
    """
    stopped: list[str] = []
    for path in sorted((workspace / RECORDS).glob("*.json")):
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
            owner, group = int(note["owner"]), int(note["group"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # torn by the kill; its group cannot be told
            continue
        if is_alive(owner, note.get("owner_started")):
            continue
        if _still_ours(group, note.get("started")):
            _stop_group(group)
            message = (
                f"stopped `{note.get('command', 'dvc')}` (process group {group}), left running"
                f" by a flow run that died (PID {owner})"
            )
            stopped.append(message)
            if on_stop is not None:
                on_stop(message)
        path.unlink(missing_ok=True)
    return stopped


def _still_ours(group: int, started: int | None) -> bool:
    """Whether process group ``group`` is still the recorded command's.

    A group's number is not given to a new process while any member lives, so live
    members with the leader gone are the command's; a live leader must be the same
    process (same start time), not a newcomer that reuses the PID.
    """
    if not group_members(group):
        return False
    leader = start_time(group)
    return leader is None or started is None or leader == started


def _stop_group(group: int) -> None:
    """TERM the group, then KILL what is left after 10 s; wait until even its zombies are gone."""
    for sig, wait_s in STOP_WAITS_S:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
        if _wait_until_empty(group, wait_s, zombies=False):
            break
    _wait_until_empty(group, REAP_WAIT_S, zombies=True)


def _wait_until_empty(group: int, wait_s: float, *, zombies: bool) -> bool:
    deadline = time.monotonic() + wait_s
    while group_members(group, zombies=zombies):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
