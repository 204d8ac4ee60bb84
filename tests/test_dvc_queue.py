"""How a study waits on DVC's queue: the polling logic of ``run_queue``, on a scripted
sequence of ``dvc queue status`` answers (the real queue runs in test_experiments.py).

Each successful run is handed on as it succeeds, once, so a long study keeps it before
it ends; a queue left without workers while runs wait is started again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import dvc_queue


class ScriptedQueue:
    """``dvc queue status`` answers in order (the last one repeats), on a clock that
    moves 10 s per look, and the ``dvc queue start`` calls made."""

    def __init__(self, answers: list[tuple[dict[str, str], int]]) -> None:
        self.answers: Iterator[tuple[dict[str, str], int]] = iter(answers)
        self.last = answers[-1]
        self.now = 0.0
        self.starts = 0

    def status(self, root: Path) -> tuple[dict[str, str], int]:
        self.now += 10.0
        self.last = next(self.answers, self.last)
        return self.last

    def start(self, root: Path, jobs: int) -> list[str]:
        self.starts += 1
        return [f"Started '{jobs}' new experiments task queue worker."]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedQueue:
    queue = ScriptedQueue([({}, 1)])
    monkeypatch.setattr(dvc_queue, "queue_status", lambda root: queue.status(root))
    monkeypatch.setattr(dvc_queue, "start_queue", lambda root, jobs: queue.start(root, jobs))
    monkeypatch.setattr(dvc_queue.time, "monotonic", lambda: queue.now)
    monkeypatch.setattr(dvc_queue.time, "sleep", lambda seconds: None)
    return queue


def test_each_success_is_handed_on_once_as_it_happens(scripted: ScriptedQueue) -> None:
    scripted.answers = iter([
        ({"a": "Running", "b": "Queued", "c": "Queued"}, 1),
        ({"a": "Success", "b": "Running", "c": "Queued"}, 1),
        ({"a": "Success", "b": "Running", "c": "Queued"}, 1),
        ({"a": "Success", "b": "Failed", "c": "Running"}, 1),
        ({"a": "Success", "b": "Failed", "c": "Success"}, 1),
    ])
    handed: list[list[str]] = []
    log: list[str] = []
    states = dvc_queue.run_queue(Path("."), ["a", "b", "c"], 1, 3600.0, log.append,
                                 on_success=handed.append)
    assert states == {"a": "Success", "b": "Failed", "c": "Success"}
    assert handed == [["a"], ["c"]]
    assert "queue: 1 Failed, 1 Running, 1 Success" in log
    assert scripted.starts == 1


def test_a_queue_left_without_workers_is_started_again(scripted: ScriptedQueue) -> None:
    scripted.answers = iter([
        ({"a": "Queued"}, 0),  # workers take seconds to report in: not yet a restart
        ({"a": "Queued"}, 0),
        ({"a": "Queued"}, 0),
        ({"a": "Queued"}, 0),  # 40 s without a worker
        ({"a": "Running"}, 1),
        ({"a": "Success"}, 0),  # workers leave once the queue is empty
    ])
    log: list[str] = []
    assert dvc_queue.run_queue(Path("."), ["a"], 2, 3600.0, log.append) == {"a": "Success"}
    assert scripted.starts == 2
    assert log.count("no DVC queue worker is left for the queued experiments: starting again") == 1


def test_a_worker_missing_from_one_status_call_is_not_restarted(scripted: ScriptedQueue) -> None:
    # Two worker places and one run training: only the 30-second window keeps the
    # queue from being started again.
    scripted.answers = iter([
        ({"a": "Running", "b": "Queued"}, 1),
        ({"a": "Running", "b": "Queued"}, 1),
        ({"a": "Running", "b": "Queued"}, 1),
        ({"a": "Running", "b": "Queued"}, 1),
        ({"a": "Running", "b": "Queued"}, 0),  # a busy worker missed the status call
        ({"a": "Running", "b": "Queued"}, 0),
        ({"a": "Success", "b": "Running"}, 1),
        ({"a": "Success", "b": "Success"}, 1),
    ])
    log: list[str] = []
    assert dvc_queue.run_queue(Path("."), ["a", "b"], 2, 3600.0, log.append) == {
        "a": "Success", "b": "Success"
    }
    assert scripted.starts == 1
    assert not any("starting again" in line for line in log)


def test_busy_workers_missing_for_minutes_are_not_restarted(scripted: ScriptedQueue) -> None:
    # One worker (jobs 1) training: under full load it misses every status call
    # until its run ends, and the queued run waits for it, not for a second worker.
    scripted.answers = iter(
        [({"a": "Running", "b": "Queued"}, 1)]
        + [({"a": "Running", "b": "Queued"}, 0)] * 30
        + [({"a": "Success", "b": "Running"}, 1), ({"a": "Success", "b": "Success"}, 1)]
    )
    log: list[str] = []
    assert dvc_queue.run_queue(Path("."), ["a", "b"], 1, 3600.0, log.append) == {
        "a": "Success", "b": "Success"
    }
    assert scripted.starts == 1
    assert not any("starting again" in line for line in log)


def test_past_the_deadline_the_study_stops_its_runs(
    scripted: ScriptedQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted.answers = iter([({"a": "Success", "b": "Running", "c": "Queued"}, 1)])
    stopped: list[dict[str, str]] = []
    monkeypatch.setattr(dvc_queue, "stop_queue", lambda root, states: stopped.append(states))
    states = dvc_queue.run_queue(Path("."), ["a", "b", "c"], 1, 25.0, lambda line: None)
    assert states == {"a": "Success", "b": "Timed out", "c": "Timed out"}
    assert stopped == [{"a": "Success", "b": "Running", "c": "Queued"}]
