"""The ``agegap-pipeline`` Prefect flow on a synthetic archive in a temporary git repo.

One project is brought up to date through the flow once (the first test to ask for
it) and reused: read-only by the tests that only read it, through a copy by those
that change it. Training runs twice in all: the first run and the experiment.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# First: it points Prefect at a temporary home before anything imports prefect.
from tests.prefect_fixtures import prefect_harness  # noqa: F401 - a fixture

# isort: split
from flows import artifacts
from flows.dvc_commands import format_override, stage_order
from flows.pipeline import build_deployment, pipeline
from tests.conftest import run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    # DVC's own, raised when the flow reads the stage graph in-process.
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

STAGES = ["download", "split", "average_faces", "train", "evaluate"]
_TRAINED: dict[str, Any] = {}


def flow_run_id(state: Any) -> Any:
    return state.state_details.flow_run_id


def task_states(state: Any) -> dict[str, str]:
    """Task run name -> state name, for the flow run that ended in ``state``."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id(state)]))
        )
    return {run.name: run.state.name for run in runs if run.state is not None}


def artifact_keys(state: Any) -> set[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id(state)])
            )
        )
    return {artifact.key for artifact in found if artifact.key}


@pytest.fixture
def trained(
    prefect_harness: str,  # noqa: F811 - the fixture imported above
    synthetic_zip: Any,
    make_project: Callable[..., Path],
) -> tuple[Path, Any]:
    """A project brought up to date by the flow once per session: (folder, final state).

    Function-scoped because conftest's project fixtures are; the first test trains,
    the others reuse (read-only) or clone it.
    """
    if "project" not in _TRAINED:
        project = make_project(synthetic_zip.path, epochs=2)
        _TRAINED["project"] = project
        _TRAINED["state"] = pipeline(workspace=str(project), return_state=True)
    return _TRAINED["project"], _TRAINED["state"]


@pytest.fixture
def clone(trained: tuple[Path, Any], tmp_path: Path) -> Path:
    """A private copy of the trained project (with its DVC cache and git history)."""
    target = tmp_path / "clone"
    shutil.copytree(trained[0], target, symlinks=True)
    return target


def test_stage_order_follows_the_dvc_graph(trained: tuple[Path, Any]) -> None:
    assert stage_order(trained[0]) == STAGES


def test_flow_runs_the_whole_pipeline_and_returns_metrics(trained: tuple[Path, Any]) -> None:
    project, state = trained
    assert state.is_completed(), state.message
    metrics = state.result()
    assert metrics == json.loads((project / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics) >= {"accuracy", "loss", "roc_auc", "n_test"}
    assert task_states(state) == dict.fromkeys(STAGES, "Completed")
    keys = artifact_keys(state)
    assert {
        artifacts.METRICS_KEY,
        artifacts.STAGES_KEY,
        artifacts.DIFF_KEY,
        artifacts.PLOTS_KEY,
        "agegap-plot-plots-evaluate-misclassified",
    } <= keys
    assert all(key == artifacts.artifact_key(key) for key in keys)


def test_second_run_reports_every_stage_skipped(trained: tuple[Path, Any]) -> None:
    project, first = trained
    state = pipeline(workspace=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == first.result()
    assert task_states(state) == dict.fromkeys(STAGES, "Skipped")


def test_overrides_run_a_named_dvc_experiment(clone: Path) -> None:
    state = pipeline(
        workspace=str(clone),
        overrides={"dropout": 0.3, "epochs": 1},
        experiment="dropout-03",
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert state.result() == json.loads((clone / "metrics.json").read_text(encoding="utf-8"))
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    experiments = {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
        for rev in exp.get("revs") or []
    }
    assert experiments["dropout-03"]["dropout"] == 0.3
    assert experiments["dropout-03"]["epochs"] == 1
    # The data stages had nothing to redo: only training and evaluation ran.
    assert task_states(state)["download"] == "Skipped"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dropout": 1.5}, "overrides: dropout=1.5 is invalid: expected a number in [0.0, 1.0)"),
        ({"dropuot": 0.3}, "overrides: unknown parameter 'dropuot'"),
        ({"kernel_size": 30, "padding": "valid"}, "shrinks a 32px image to nothing"),
    ],
)
def test_bad_overrides_fail_early_with_the_validation_message(
    trained: tuple[Path, Any], overrides: dict[str, Any], message: str
) -> None:
    state = pipeline(workspace=str(trained[0]), overrides=overrides, return_state=True)
    assert state.is_failed()
    assert message in state.message
    assert task_states(state) == {}  # failed before any DVC command


def test_failing_stage_fails_the_run_with_its_message(
    prefect_harness: str,  # noqa: F811
    tmp_path: Path,
    make_project: Callable[..., Path],
) -> None:
    project = make_project(tmp_path / "no-such-archive.zip")
    state = pipeline(workspace=str(project), download_retries=0, return_state=True)
    assert state.is_failed()
    assert "stage 'download' failed" in state.message
    assert "no-such-archive.zip" in state.message
    assert task_states(state) == {"download": "Failed"}


def test_two_runs_started_together_on_one_workspace_both_finish(clone: Path) -> None:
    (clone / "metrics.json").unlink()  # evaluate has work to do
    states: list[Any] = [None, None]

    def start(index: int) -> None:
        states[index] = pipeline(workspace=str(clone), return_state=True)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=500)
    assert all(state is not None and state.is_completed() for state in states), [
        state and state.message for state in states
    ]
    on_disk = json.loads((clone / "metrics.json").read_text(encoding="utf-8"))
    assert [state.result() for state in states] == [on_disk, on_disk]
    # One run evaluated; the other waited for the lock and found everything up to date.
    evaluated = [task_states(state)["evaluate"] for state in states]
    assert sorted(evaluated) == ["Completed", "Skipped"]


def test_served_deployment_has_the_schedule_and_parameters(
    trained: tuple[Path, Any],
) -> None:
    from prefect import get_client

    project = trained[0]
    deployment = build_deployment(project, cron="0 3 * * *", overrides={"dropout": 0.3})
    deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("agegap-pipeline/nightly")
    assert [s.schedule.cron for s in stored.schedules] == ["0 3 * * *"]
    assert stored.schedules[0].schedule.timezone == "UTC"
    assert stored.parameters == {"workspace": str(project), "overrides": {"dropout": 0.3}}
    assert stored.entrypoint == "flows.pipeline.pipeline"

    build_deployment(project, interval=5, name="every-5s").apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("agegap-pipeline/every-5s")
    assert [s.schedule.interval.total_seconds() for s in stored.schedules] == [5.0]
    assert stored.parameters == {"workspace": str(project)}


def test_overrides_are_written_as_dvc_understands_them() -> None:
    assert format_override("dropout", 0.3) == "dropout=0.3"
    assert format_override("augment_flip", False) == "augment_flip=false"
    assert format_override("conv_filters", [8, 16]) == "conv_filters=[8,16]"
    assert format_override("data_url", 'a b:"c"') == 'data_url="a b:\\"c\\""'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--overrides", "{bad"], "error: --overrides: not valid JSON"),
        (["serve", "--overrides", "[1]"], "error: --overrides: expected a JSON object"),
        (["serve"], "error: PREFECT_API_URL is not set"),
        (["run", "--workspace", "/nonexistent"], "not a DVC pipeline workspace"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    import sys

    result = run([sys.executable, "-m", "flows.pipeline", *args], tmp_path, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stage_past_its_timeout_is_stopped_and_fails_the_run(
    prefect_harness: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    import psutil

    project = tmp_path / "slow"
    project.mkdir()
    (project / "params.yaml").write_text("{}\n", encoding="utf-8")
    (project / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: sleep 120 && echo never > out.txt\n    outs: [out.txt]\n",
        encoding="utf-8",
    )
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    state = pipeline(workspace=str(project), stage_timeouts={"slow": 3}, return_state=True)
    assert state.is_failed()
    assert "ran past its timeout of 3 s" in state.message
    sleepers = [
        p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "120"]
    ]
    assert not sleepers, "the stage's process outlived its task"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "61 * * *"], 'error: schedule: Invalid cron string: "61 * * *"'),
        (["--timezone", "Mars/Olympus"], 'error: schedule: Invalid timezone: "Mars/Olympus"'),
        (["--interval", "0"], "error: --interval 0.0: expected a positive number of seconds"),
        (["--overrides", '{"epochs": 0}'], "error: overrides: epochs=0 is invalid"),
    ],
)
def test_serve_refuses_a_bad_schedule_before_serving(args: list[str], message: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO, project_env

    env = {**project_env(), "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never contacted
    result = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "serve", "--workspace", str(REPO), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
