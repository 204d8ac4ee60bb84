"""A stage whose ``dvc repro`` was killed stops, instead of training on as an orphan.

Under DVC a thread watches the DVC process that started the stage and, when it dies,
interrupts the stage as Ctrl-C would (docs/design.md says why this way)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

STAGE_VARIABLE = "DVC_STAGE"  # set by DVC for every command it runs, inherited by its shell
POLL_S = 1.0
# After the interrupt, time to clean up; then the process exits regardless (a handler
# installed later may swallow the interrupt).
GRACE_S = 20.0
_PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone or unknown.

    With the PID it names one process for good: a PID can be reused, a (PID, start)
    pair cannot.
    """
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def parent_of(pid: int) -> int | None:
    """The parent PID of ``pid`` from ``/proc``, or None."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces): field 3 onwards."""
    try:
        text = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def is_alive(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (not a reused PID).

    A zombie counts as gone: it has exited, only its exit status waits to be read.
    """
    if started is not None and _PROC.is_dir():
        fields = _stat_fields(pid)
        return bool(fields) and fields[0] not in ("Z", "X") and int(fields[19]) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(group: int, *, zombies: bool = False) -> list[int]:
    """The processes of process group ``group``; zombies (exited, not yet reaped) if asked.

    Without ``/proc``, one signal-0 probe: the group's PID when any member exists.
    """
    if not _PROC.is_dir():
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [group]
    members = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and (zombies or fields[0] not in ("Z", "X")) and int(fields[2]) == group:
                members.append(int(entry.name))
    return members


def _environment_value(pid: int, name: str) -> str | None:
    """``name`` in the environment ``pid`` was started with, or None (unset or unreadable)."""
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in raw.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def runner_pid() -> int:
    """The process that ran this command for DVC: the first ancestor not in the stage's shell.

    DVC gives the command, and so its shell, ``DVC_STAGE``; DVC itself does not have it
    (or, nested in another stage, has another value).
    """
    stage = os.environ.get(STAGE_VARIABLE)
    pid = os.getppid()
    for _ in range(8):
        if _environment_value(pid, STAGE_VARIABLE) != stage:
            return pid
        parent = parent_of(pid)
        if parent is None or parent <= 1:
            return pid
        pid = parent
    return pid


def stop_when_runner_dies(what: str) -> threading.Thread | None:
    """Under DVC, interrupt this process when the DVC process that started it dies.

    Returns the watching thread (a daemon), or None when not run by DVC.
    """
    if not os.environ.get(STAGE_VARIABLE):
        return None
    runner = runner_pid()
    started = start_time(runner)
    parent = os.getppid()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A shell starts background jobs (`dvc repro &`) with SIGINT ignored; the interrupt
        # below must still reach the stage, so that it cleans up before it exits.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def gone() -> bool:
        return os.getppid() != parent or not is_alive(runner, started)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(POLL_S):
            if gone():
                break
        with contextlib.suppress(OSError, ValueError):  # the log may be a closed pipe
            print(
                f"{what}: stopping: the DVC process that started it (PID {runner}) is gone,"
                " and nothing would record what it makes",
                file=sys.stderr,
                flush=True,
            )
        # A real signal, aimed at the main thread, also cuts short a sleep or a wait there.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        stop.wait(GRACE_S)
        os._exit(130)

    thread = threading.Thread(target=watch, name=f"{what}-runner-watch", daemon=True)
    thread.start()
    return thread
