"""Experiments on DVC's own queue: several local workers, one machine.

What ``python -m flows.experiments`` runs a study on. Queue states are read through
the CLI (``dvc queue status``) because the in-process API was seen to block until the
whole queue had finished. DVC's workers leave by themselves a minute after the queue
empties, so nothing here sends them ``dvc queue stop``: its shutdown message stays in
the queue's broker and stops the next study's first worker after one experiment.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flows.dvc_commands import dvc_environment, experiment_args, run_dvc

DONE_STATES = frozenset({"Success", "Failed"})
_QUEUE_STATES = frozenset({"Queued", "Running", "Success", "Failed", "Unknown"})
_WORKERS = re.compile(r"^Worker status: (?P<active>\d+) active, (?P<idle>\d+) idle")


def queue_experiments(root: Path, experiments: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Queue each named experiment with its overrides; name -> DVC's error lines, for
    those that could not be queued.

    A finished queue entry of the same name (a failed attempt, or a run whose
    experiment was since removed) is dropped first, so the states read afterwards
    are this attempt's.
    """
    states = queue_status(root)[0]
    refused = {}
    for name, overrides in experiments.items():
        if states.get(name) in DONE_STATES:
            run_dvc(["queue", "remove", name], root, check=False)
        args = experiment_args(name, overrides)
        args.insert(2, "--queue")
        result = run_dvc(args, root, check=False)
        if result.returncode:
            refused[name] = result.error_summary()
    return refused


def run_queue(
    root: Path,
    names: list[str],
    jobs: int,
    timeout_s: float,
    log: Callable[[str], Any],
    on_success: Callable[[list[str]], Any] | None = None,
) -> dict[str, str]:
    """``dvc queue start -j N``, then wait until every named experiment succeeded or failed.

    ``on_success`` is called with the experiments that succeeded since the last look,
    as they do, so a long study can keep its results before it ends. Should no worker
    be left while experiments of ours wait (one stopped by another tool, or crashed),
    the workers are started again; not while ours fill every worker's place, since
    a worker busy training misses status calls for minutes and a second one would
    train beside it.
    """
    for line in start_queue(root, jobs):
        log(line)
    deadline = time.monotonic() + timeout_s
    # When the queue last had a worker or nothing waiting; a worker takes seconds to
    # report in, and one busy training may miss a status call: only a lasting absence
    # counts.
    healthy_at = time.monotonic()
    last: dict[str, str] = {}
    mine = dict.fromkeys(names, "Queued")
    try:
        while True:
            states, workers = queue_status(root)
            mine = {name: states.get(name, "Unknown") for name in names}
            running = list(mine.values()).count("Running")
            if workers or "Queued" not in mine.values() or running >= jobs:
                healthy_at = time.monotonic()
            elif time.monotonic() - healthy_at > 30:
                log("no DVC queue worker is left for the queued experiments: starting again")
                for line in start_queue(root, jobs):
                    log(line)
                healthy_at = time.monotonic()
            if mine != last:
                counts = {s: list(mine.values()).count(s) for s in sorted(set(mine.values()))}
                log("queue: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
                succeeded = [n for n, s in mine.items() if s == "Success" != last.get(n)]
                if on_success and succeeded:
                    on_success(succeeded)
                last = mine
            if all(state in DONE_STATES for state in mine.values()):
                return mine
            if time.monotonic() > deadline:
                log(f"the study ran past {timeout_s:.0f} s: stopping its experiments")
                stop_queue(root, mine)
                return {n: (s if s in DONE_STATES else "Timed out") for n, s in mine.items()}
            time.sleep(5)
    except BaseException:
        # Cancelled or interrupted: DVC's queue workers would otherwise run on alone.
        stop_queue(root, mine)
        raise


def start_queue(root: Path, jobs: int) -> list[str]:
    """``dvc queue start -j N``; its output lines.

    Not through :func:`run_dvc`: the workers DVC starts inherit the command's stdout,
    so a pipe would stay open, and the call blocked, until the last worker exits.
    Its output goes to a file instead.
    """
    log = root / ".dvc" / "tmp" / "agegap-queue-start.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "start", "--jobs", str(jobs)],
            cwd=root,
            env=dvc_environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=300,
        )
    return [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def stop_queue(root: Path, states: Mapping[str, str]) -> None:
    """Kill this study's running experiments and drop its queued ones."""
    running = [name for name, state in states.items() if state == "Running"]
    queued = [name for name, state in states.items() if state == "Queued"]
    if running:
        run_dvc(["queue", "kill", *running], root, check=False)
    if queued:
        run_dvc(["queue", "remove", *queued], root, check=False)


def queue_status(root: Path) -> tuple[dict[str, str], int]:
    """Experiment name -> Queued / Running / Success / Failed, and how many workers are
    up (active or idle), from ``dvc queue status``.

    DVC lists the newest task first; where a name was queued twice, that one counts.
    """
    result = run_dvc(["queue", "status"], root, check=False)
    states: dict[str, str] = {}
    workers = 0
    for line in result.lines:
        fields = line.split()
        # Task  Name  Created  Status: a short hash, the name, a date, the status last.
        if len(fields) >= 4 and _is_hex(fields[0]) and fields[-1] in _QUEUE_STATES:
            states.setdefault(fields[1], fields[-1])
        elif match := _WORKERS.match(line.strip()):
            workers = int(match["active"]) + int(match["idle"])
    return states, workers


def failure_reason(root: Path, name: str, state: str) -> str:
    """Why a queued experiment did not succeed: the error lines of its log."""
    log = run_dvc(["queue", "logs", name], root, check=False)
    return log.error_summary(limit=3) or f"experiment ended as {state}"


def _is_hex(text: str) -> bool:
    return len(text) >= 7 and all(c in "0123456789abcdef" for c in text)
