"""Processes killed with ``kill -9``: the next run needs no cleanup and loses nothing.

- ``dvc repro`` killed while ``train`` runs: the orphaned training stops by itself, a
  second training never writes beside a first, the next ``dvc repro`` gives the
  uninterrupted run's metrics.
- A flow run killed in the middle of a stage: the next flow run stops what it left
  running and gives the right result.
- A stage DVC ran in words the flow does not know is reported as ran, never skipped.

The end-to-end tests start from a copy of one uninterrupted ``dvc repro`` (the
reference) with the training's outputs deleted, so only train and evaluate run again.
"""

from __future__ import annotations

# First: it points Prefect at a temporary home before anything imports prefect.
from tests.prefect_fixtures import prefect_harness  # noqa: F401 - a fixture

# isort: split
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agegap import orphans, workspace_lock
from agegap.errors import AgegapError
from flows import leftovers
from flows.dvc_commands import RAN, RESTORED, SKIPPED, DvcRun
from tests.conftest import REPO, copy_project, project_env, run
from tests.synthetic import make_archive

# Long enough that a kill lands mid-training; each epoch of the tiny data is ~0.2 s.
EPOCHS = 30
TRAIN_OUTPUTS = ("models/model.keras", "dvclive", "logs", "train_metrics.json", "metrics.json")


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def gone(pid: int, started: int | None) -> bool:
    return not orphans.is_alive(pid, started)


@contextlib.contextmanager
def reaped(*processes: subprocess.Popen[Any]) -> Iterator[None]:
    """Whatever a test started is killed at the end, pass or fail."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


# --- one training at a time ---------------------------------------------------------


HOLD = """
    import sys, time
    from pathlib import Path
    from agegap import workspace_lock
    workspace_lock.hold("train", Path(sys.argv[1]), wait_s=float(sys.argv[2]))
    print("held", flush=True)
    time.sleep(120)
"""


def holding(root: Path, wait_s: float) -> subprocess.Popen[str]:
    """A process that takes ``root``'s train lock, says "held" and keeps it for two minutes."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(root), str(wait_s)],
        env=project_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_second_training_waits_for_the_first_and_follows_it_when_it_dies(
    tmp_path: Path,
) -> None:
    (tmp_path / ".dvc").mkdir()
    first = holding(tmp_path, 60)
    with reaped(first):
        assert first.stdout is not None and first.stdout.readline() == "held\n"
        second = holding(tmp_path, 60)
        with reaped(second):
            assert second.stderr is not None and second.stdout is not None
            waiting = second.stderr.readline()
            assert f"another train (PID {first.pid}: " in waiting, waiting
            assert "waiting up to 60 s" in waiting
            os.kill(first.pid, signal.SIGKILL)  # the kernel frees its lock: nothing goes stale
            assert second.stdout.readline() == "held\n"
    assert workspace_lock.lock_path("train", tmp_path) == tmp_path / ".dvc/tmp/agegap-train.lock"


def test_a_training_that_stays_busy_is_refused_in_one_line(tmp_path: Path) -> None:
    first = holding(tmp_path, 0)
    with reaped(first):
        assert first.stdout is not None and first.stdout.readline() == "held\n"
        told: list[str] = []
        with pytest.raises(AgegapError) as refused:
            workspace_lock.hold("train", tmp_path, wait_s=1, on_wait=told.append)
    message = str(refused.value)
    assert "\n" not in message
    assert f"another train (PID {first.pid}: " in message and "after 1 s" in message
    assert len(told) == 1
    # Outside a DVC repository the lock sits in the folder itself: no fake .dvc is made.
    assert not (tmp_path / ".dvc").exists()


# --- a stage dies with the DVC that started it --------------------------------------


STAGE = """
    import os, time
    from agegap.orphans import stop_when_runner_dies
    assert stop_when_runner_dies("train") is not None
    print(os.getpid(), flush=True)
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        print("cleaned up", flush=True)
        raise
"""


@pytest.mark.parametrize(
    ("through_shell", "sigint_ignored"),
    [(False, False), (True, False), (False, True)],
    ids=["exec", "shell-between", "background-job"],
)
def test_a_stage_stops_when_the_dvc_that_started_it_is_killed(
    tmp_path: Path, through_shell: bool, sigint_ignored: bool
) -> None:
    """``background-job``: ``dvc repro &`` in a shell starts everything with SIGINT ignored,
    and the stage must still be interrupted, not only ended after the grace period."""
    stage = [sys.executable, "-c", textwrap.dedent(STAGE)]
    if through_shell:  # a shell that does not exec its command stays between DVC and it
        stage = ["/bin/sh", "-c", '"$0" "$@"; true', *stage]
    # A stand-in for DVC: runs the command with DVC_STAGE set, as DVC does.
    runner_code = (
        "import os, signal, subprocess, sys;"
        + (" signal.signal(signal.SIGINT, signal.SIG_IGN);" if sigint_ignored else "")
        + " subprocess.run(sys.argv[1:], env={**os.environ, 'DVC_STAGE': 'train'})"
    )
    log = tmp_path / "stage.log"
    with log.open("w") as out:
        runner = subprocess.Popen(
            [sys.executable, "-c", runner_code, *stage],
            env=project_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    with reaped(runner):
        pid = int(wait_for(lambda: log.read_text().split("\n", 1)[0].strip(), 60, "the stage"))
        started = orphans.start_time(pid)
        runner.kill()
        runner.wait()
        wait_for(lambda: gone(pid, started), 15, "the orphaned stage to stop")
    output = log.read_text()
    assert f"train: stopping: the DVC process that started it (PID {runner.pid}) is gone" in output
    assert "cleaned up" in output  # interrupted as by Ctrl-C: its cleanup ran


def test_outside_dvc_a_stage_is_not_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """``nohup python -m stages.train &`` is meant to outlive its shell."""
    monkeypatch.delenv(orphans.STAGE_VARIABLE, raising=False)
    assert orphans.stop_when_runner_dies("train") is None


# --- a flow run's leftovers ---------------------------------------------------------


def test_the_commands_of_a_dead_flow_run_are_stopped_and_a_live_ones_kept(
    tmp_path: Path,
) -> None:
    (tmp_path / ".dvc").mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A real orphan, in a group of its own, as DVC is once its flow run is killed.
    starter = subprocess.run(
        ["/bin/sh", "-c", "setsid sleep 120 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = int(starter.stdout)
    wait_for(lambda: orphans.group_members(orphan), 10, "the orphan's own process group")
    kept = subprocess.Popen(["sleep", "120"], start_new_session=True)
    with reaped(kept):
        orphan_note = leftovers.record(tmp_path, orphan, ["repro", "--single-item", "train"])
        assert orphan_note is not None
        note = json.loads(orphan_note.read_text())
        orphan_note.write_text(json.dumps({**note, "owner": dead.pid, "owner_started": 1}))
        kept_note = leftovers.record(tmp_path, kept.pid, ["repro"])  # owner: this live process
        told: list[str] = []
        stopped = leftovers.stop_leftovers(tmp_path, told.append)
        expected = (
            f"stopped `dvc repro --single-item train` (process group {orphan}),"
            f" left running by a flow run that died (PID {dead.pid})"
        )
        assert stopped == told == [expected]
        assert not orphans.group_members(orphan, zombies=True)  # reaped: DVC sees it gone
        assert kept.poll() is None
        assert not orphan_note.exists() and kept_note is not None and kept_note.exists()
        leftovers.forget(kept_note)
        assert not kept_note.exists()


# --- ran or skipped -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "outcome"),
    [
        (["Running stage 'train':", "> python -m stages.train", "Updating lock file"], RAN),
        (["Stage 'train' didn't change, skipping", "Data and pipelines are up to date."], SKIPPED),
        (["'data.dvc' didn't change, skipping"], RAN),  # another stage's words
        (["Stage 'train' is cached - skipping run, checking out outputs"], RESTORED),
        # Wording a later DVC might use: DVC did something, so it is not "skipped".
        (["Reproducing 'train'", "> python -m stages.train", "Updating lock file"], RAN),
        ([], RAN),
        # Started, then something printed a skip: running wins.
        (["Running stage 'train':", "Stage 'train' didn't change, skipping"], RAN),
    ],
    ids=["running", "skipped", "other-stage", "run-cache", "unknown-wording", "silent", "both"],
)
def test_a_stage_is_skipped_only_when_dvc_says_so(lines: list[str], outcome: str) -> None:
    assert DvcRun(["repro", "--single-item", "train"], 0, lines).stage_outcome("train") == outcome


def test_a_data_source_dvc_skipped_is_reported_skipped() -> None:
    result = DvcRun(
        ["repro", "--single-item", "data.dvc"], 0, ["'data.dvc' didn't change, skipping"]
    )
    assert result.stage_outcome("data.dvc") == SKIPPED


@pytest.mark.parametrize(
    ("lines", "state"),
    [
        (["Stage 'train' didn't change, skipping"], "Skipped"),
        (["Reproducing 'train' in words this flow has never seen"], None),
    ],
)
def test_the_stage_task_shows_skipped_only_for_a_skip(
    monkeypatch: pytest.MonkeyPatch, lines: list[str], state: str | None
) -> None:
    import flows.pipeline as pipeline_module

    monkeypatch.setattr(
        pipeline_module, "_run_dvc_logged", lambda args, *_: DvcRun(args, 0, lines, 1.0)
    )
    returned = pipeline_module.run_stage.fn("/nowhere", "train", 60.0)
    if state is None:
        assert returned == {"stage": "train", "outcome": RAN, "seconds": 1.0}
    else:
        assert returned.name == state


# --- end to end: the real pipeline, killed ------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after one uninterrupted ``dvc repro``: the metrics every recovery must match."""
    base = tmp_path_factory.mktemp("faults")
    archive = make_archive(base / "LAGdataset_100.zip")
    project = copy_project(base / "reference", archive.path, epochs=EPOCHS)
    run(["dvc", "repro"], project)
    return project


def retrain_copy(reference: Path, target: Path) -> Path:
    """A copy of the reference whose training and evaluation have to run again."""
    shutil.copytree(reference, target, symlinks=True)
    for relative in TRAIN_OUTPUTS:
        path = target / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return target


def trainings_in(project: Path) -> list[int]:
    """PIDs of ``python -m stages.train`` processes working in ``project``."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            if "stages.train" in (process.info["cmdline"] or []) and process.info["cwd"] == str(
                project
            ):
                found.append(process.pid)
    return found


def same_results(project: Path, reference: Path) -> None:
    for name in ("metrics.json", "train_metrics.json"):
        assert json.loads((project / name).read_text()) == json.loads(
            (reference / name).read_text()
        ), name


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_dvc_repro_then_repro_gives_the_uninterrupted_metrics(
    reference: Path, tmp_path: Path
) -> None:
    project = retrain_copy(reference, tmp_path / "project")
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        repro = subprocess.Popen(
            ["dvc", "repro"], cwd=project, env=project_env(), stdout=out, stderr=subprocess.STDOUT
        )
    with reaped(repro):
        wait_for(lambda: (project / "dvclive").exists(), 300, "training to start")
        (orphan,) = trainings_in(project)
        started = orphans.start_time(orphan)
        repro.send_signal(signal.SIGKILL)
        repro.wait()
        wait_for(lambda: gone(orphan, started), 30, "the orphaned training to stop")
    killed = log.read_text()
    assert "train: stopping: the DVC process that started it" in killed, killed[-3000:]
    assert "train: best epoch" not in killed  # it stopped; it did not train to the end

    again = run(["dvc", "repro"], project)  # no lock to clean up by hand
    assert "Running stage 'train'" in again.stdout
    assert not trainings_in(project)
    same_results(project, reference)
    assert "changed" not in run(["dvc", "status"], project).stdout


def kill_flow_run_once(
    project: Path, api_url: str, log: Path, started: Callable[[], Any], timeout: float, what: str
) -> None:
    """Start ``python -m flows.pipeline run`` on ``project``; ``kill -9`` it once ``started``."""
    with log.open("w") as out:
        flow_run = subprocess.Popen(
            [sys.executable, "-m", "flows.pipeline", "run", "--workspace", str(project)],
            cwd=REPO,
            env={**project_env(), "PREFECT_API_URL": api_url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    with reaped(flow_run):
        wait_for(started, timeout, what)
        flow_run.send_signal(signal.SIGKILL)
        flow_run.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_flow_run_then_next_flow_run_gives_the_right_result(
    prefect_harness: str,  # noqa: F811 - the fixture imported above
    reference: Path,
    tmp_path: Path,
) -> None:
    from flows.pipeline import pipeline

    project = retrain_copy(reference, tmp_path / "project")
    kill_flow_run_once(project, prefect_harness, tmp_path / "killed-flow.log",
                       lambda: (project / "dvclive").exists(), 300, "the flow's training to start")

    state = pipeline(workspace=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == json.loads((reference / "metrics.json").read_text())
    assert not trainings_in(project)
    assert not list((project / leftovers.RECORDS).glob("*.json"))
    same_results(project, reference)


SLOW_STAGE = """\
import json, pathlib, time
seconds = float(pathlib.Path("seconds.txt").read_text())
pathlib.Path("started").write_text("")
time.sleep(seconds)  # silent: no closed pipe stops it
pathlib.Path("metrics.json").write_text(json.dumps({"slept": seconds}))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_silent_stage_left_by_a_killed_flow_run_is_stopped_by_the_next(
    prefect_harness: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Left running, the old stage holds DVC's lock on its outputs: "'metrics.json' is busy"."""
    from flows.pipeline import pipeline

    project = tmp_path / "silent"
    project.mkdir()
    (project / "params.yaml").write_text("{}\n", encoding="utf-8")
    (project / "slow.py").write_text(SLOW_STAGE, encoding="utf-8")
    (project / "seconds.txt").write_text("300", encoding="utf-8")
    (project / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: python slow.py\n    deps: [slow.py, seconds.txt]\n"
        "    outs:\n      - metrics.json:\n          cache: false\n",
        encoding="utf-8",
    )
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    kill_flow_run_once(project, prefect_harness, tmp_path / "killed-flow.log",
                       lambda: (project / "started").exists(), 240, "the stage to start")
    (note,) = (project / leftovers.RECORDS).glob("*.json")
    group = int(note.stem)
    assert orphans.group_members(group)  # DVC and the stage live on without their flow run

    (project / "seconds.txt").write_text("0", encoding="utf-8")
    state = pipeline(workspace=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == {"slept": 0.0}
    assert not orphans.group_members(group)
    assert not note.exists()
