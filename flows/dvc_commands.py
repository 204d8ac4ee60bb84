"""Running DVC from the flows: subprocesses, one at a time per workspace.

Why a subprocess, a lock, and "ran" as the default outcome: docs/orchestration.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from agegap.errors import AgegapError
from agegap.params import param_names, params_from_dict, read_params_mapping
from flows import leftovers

LOCK_FILE = Path(".dvc") / "tmp" / "agegap-flow.lock"
SKIPPED = "skipped"
RAN = "ran"
RESTORED = "restored"
NOT_RUN = "not run"

_RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)'")
_SKIPPING = re.compile(r"^(Stage )?'(?P<stage>[^']+)' didn't change, skipping")
# DVC's run cache had the outputs for these deps and params: checked out, not computed.
_RESTORING = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run")
_ERROR_LINE = re.compile(r"^(error|ERROR)\b:?")


class DvcCommandError(RuntimeError):
    """A DVC command failed; the message carries the command's own error lines."""


@dataclass
class DvcRun:
    """What one DVC command did: its exit status and every line it printed."""

    args: list[str]
    returncode: int
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def stage_outcomes(self) -> dict[str, str]:
        """Each stage DVC mentioned, in order: ``ran``, ``restored`` or ``skipped``.

        Running beats the other two: a stage DVC started ran, whatever else it said.
        """
        outcomes: dict[str, str] = {}
        for line in self.lines:
            if match := _SKIPPING.match(line):
                outcomes.setdefault(match["stage"], SKIPPED)
            elif match := _RESTORING.match(line):
                outcomes.setdefault(match["stage"], RESTORED)
            elif match := _RUNNING.match(line):
                outcomes[match["stage"]] = RAN
        return outcomes

    def stage_outcome(self, stage: str) -> str:
        """What a successful ``dvc repro`` of ``stage`` did; ``ran`` unless DVC said otherwise."""
        return self.stage_outcomes().get(stage, RAN)

    def error_summary(self, limit: int = 8) -> str:
        """The lines that explain a failure: the stages' ``error:`` and DVC's ``ERROR:`` lines.

        A stage that fails through :func:`agegap.errors.exits_cleanly` prints one
        ``error: <message>`` line; DVC adds ``ERROR: failed to reproduce ...``. When
        neither is there (a crash), the last lines of output are the best evidence.
        """
        errors = [line for line in self.lines if _ERROR_LINE.match(line.strip())]
        chosen = errors or [line for line in self.lines if line.strip()]
        return "\n".join(chosen[-limit:])


def workspace_root(workspace: str | os.PathLike[str]) -> Path:
    """The absolute DVC repo root, or a one-line error if ``workspace`` is not one."""
    root = Path(workspace).expanduser().resolve()
    if not (root / "dvc.yaml").is_file():
        raise AgegapError(f"{root}: not a DVC pipeline workspace (no dvc.yaml there)")
    if not (root / ".dvc").is_dir():
        raise AgegapError(f"{root}: not a DVC repository (no .dvc folder; run `dvc init`)")
    return root


def stage_order(workspace: Path) -> list[str]:
    """The stages of ``dvc.yaml`` in dependency order, ties broken by their order in the file.

    Read from DVC's own graph (a stage depends on the stages whose outputs it uses),
    so the order is never written down a second time. Names are addressed relative
    to the workspace (``train``, or ``sub/dvc.yaml:train``), never to this process's
    current directory, since the flow runs DVC with ``cwd=workspace``.
    """
    import networkx as nx
    from dvc.repo import Repo

    root = workspace.resolve()
    with Repo(str(root)) as repo:
        stages = [stage for stage in repo.index.stages if not stage.is_data_source]
        position = {id(stage): index for index, stage in enumerate(stages)}
        # DVC's edges point from a stage to the stages it depends on; reverse them.
        graph = repo.index.graph.reverse(copy=True)
        ordered = nx.lexicographical_topological_sort(
            graph, key=lambda stage: position.get(id(stage), len(position))
        )
        return [_address(stage, root) for stage in ordered if id(stage) in position]


def _address(stage: Any, root: Path) -> str:
    """How ``dvc repro`` run in ``root`` names ``stage``."""
    dvcfile = Path(stage.path).resolve().relative_to(root)
    if dvcfile == Path("dvc.yaml"):
        return str(stage.name)
    return f"{dvcfile.as_posix()}:{stage.name}"


@contextlib.contextmanager
def workspace_lock(
    workspace: Path,
    *,
    on_wait: Callable[[str], None] | None = None,
    timeout: float = -1,
) -> Iterator[None]:
    """Hold the workspace's DVC lock: one flow run's DVC commands at a time.

    A file lock (not a Prefect concurrency limit) so it also holds against DVC
    commands started by other tools of this project and needs no server setup.
    ``on_wait`` is told once when another run holds the lock, so the wait is visible,
    and of each DVC command left by a dead run that is stopped once the lock is taken.
    """
    path = workspace / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait(f"another DVC run holds {path}; waiting for it to finish")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise DvcCommandError(
                f"gave up after {timeout:.0f} s waiting for another DVC run in {workspace}"
            ) from None
    try:
        leftovers.stop_leftovers(workspace, on_wait)
        yield
    finally:
        lock.release()


def dvc_environment() -> dict[str, str]:
    """The environment for DVC: this interpreter's scripts first on ``PATH``.

    The stages' commands say ``python -m stages.…``; without this, a flow started as
    ``/path/to/venv/bin/python -m flows.pipeline`` from a shell where the venv is not
    activated would run the stages with whatever ``python`` comes first.
    """
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (scripts, env.get("PATH", "")) if p)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_dvc(
    args: list[str],
    workspace: Path,
    *,
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> DvcRun:
    """Run ``dvc <args>`` in ``workspace``, handing each output line to ``on_line``.

    stdout and stderr are merged so the log reads in the order things happened. On
    timeout, or if the caller is interrupted (a Prefect task timeout), the whole
    process group is killed: a stage's Python child must not outlive its task.
    """
    command = [sys.executable, "-m", "dvc", *args]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=workspace,
        env=dvc_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    note = leftovers.record(workspace, process.pid, args)
    lines: list[str] = []
    pending: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            pending.put(raw.rstrip("\r\n"))
        pending.put(None)

    reader = threading.Thread(target=pump, name="dvc-output", daemon=True)
    reader.start()
    try:
        while True:
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                raise DvcCommandError(
                    f"`dvc {' '.join(args)}` ran past its timeout of {timeout:.0f} s"
                    " and was stopped"
                )
            try:
                # Wake up at least every second so a Prefect timeout can interrupt us.
                line = pending.get(timeout=1.0 if remaining is None else min(1.0, remaining))
            except queue.Empty:
                continue
            if line is None:
                break
            lines.append(line)
            if on_line is not None:
                on_line(line)
        returncode = process.wait()
    finally:
        if process.poll() is None:
            _kill_group(process)
        leftovers.forget(note)
        reader.join(timeout=5)
    result = DvcRun(args, returncode, lines, time.monotonic() - started)
    if check and returncode != 0:
        raise DvcCommandError(
            f"`dvc {' '.join(args)}` failed with exit status {returncode}:\n"
            f"{result.error_summary()}"
        )
    return result


def _kill_group(process: subprocess.Popen[str]) -> None:
    """Stop a command and everything it started: TERM, then KILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def validate_overrides(workspace: Path, overrides: Mapping[str, Any]) -> None:
    """Refuse bad overrides before any work starts, with the train stage's own message.

    The values are checked by :func:`agegap.params.params_from_dict` on params.yaml
    merged with the overrides (so cross-key checks such as a kernel too big for the
    image also apply). Unknown keys are refused too: ``dvc exp run -S`` would reject a
    key that params.yaml lacks, and a typo must not silently train the default.
    """
    if not isinstance(overrides, Mapping):
        raise AgegapError(
            f"overrides: expected a mapping of parameter names to values, got {overrides!r}"
        )
    current = read_params_mapping(workspace / "params.yaml")
    params_from_dict(current, source=str(workspace / "params.yaml"))
    known = set(param_names())
    for key in overrides:
        if key not in known or key not in current:
            raise AgegapError(
                f"overrides: unknown parameter {key!r}: expected one of "
                + ", ".join(name for name in param_names() if name in current)
            )
    params_from_dict({**current, **overrides}, source="overrides")


def format_override(key: str, value: Any) -> str:
    """``key=value`` as ``dvc exp run -S`` parses it (Hydra's override grammar).

    Strings are double-quoted so paths and URLs (``:``, ``/``, spaces) survive;
    numbers, booleans and lists are written as JSON, which Hydra reads the same way.
    """
    if isinstance(value, str):
        text = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{key}="{text}"'
    if isinstance(value, list | tuple):
        return f"{key}=[{','.join(json.dumps(item) for item in value)}]"
    return f"{key}={json.dumps(value)}"


def experiment_args(name: str, overrides: Mapping[str, Any]) -> list[str]:
    """The arguments of ``dvc exp run`` for a named experiment with ``overrides``."""
    args = ["exp", "run", "--name", name]
    for key, value in overrides.items():
        args += ["--set-param", format_override(key, value)]
    return args


def experiment_name(text: str) -> str:
    """A name DVC accepts for an experiment (a valid git ref component)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")
    if not name:
        raise AgegapError(f"experiment name {text!r}: needs letters or digits")
    return name[:100]


def exp_show(root: Path) -> list[dict[str, Any]]:
    """``dvc exp show --json``: this commit's experiments with their params and metrics."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        cwd=root, env=dvc_environment(), capture_output=True, text=True, timeout=600,
    )
    if result.returncode:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise AgegapError(f"dvc exp show failed in {root}: {lines[-1]}")
    return json.loads(result.stdout)
