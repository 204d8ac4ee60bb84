"""Shared fixtures: synthetic archives, temporary copies of the project, the real archive."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agegap.machine import cpu_name, native_features
from tests.synthetic import SyntheticArchive, make_archive

REPO = Path(__file__).resolve().parents[1]
REAL_ARCHIVE = REPO.parent / "shared" / "datasets" / "LAGdataset_100.zip"

# Small and fast: 32-pixel images, a few images per split, float32 for exact repeats.
FAST_PARAMS: dict[str, Any] = {
    "image_size": 32,
    "train_per_class": 20,
    "validation_per_class": 10,
    "test_per_class": 10,
    "conv_filters": [8, 8, 16],
    "kernel_size": 3,
    "dense_units": 16,
    "batch_size": 8,
    "epochs": 5,
    "learning_rate": 0.005,
    "train_images_per_epoch": 0,
    "precision": "float32",
    # Batch normalisation's moving statistics (momentum 0.99) need hundreds of steps to
    # settle; these runs make 25, so inference would see unsettled statistics and score
    # at chance. Pinned, so these tests do not depend on the default; tests/test_levers.py
    # covers batch norm.
    "batch_norm": False,
    # The robustness augmentations and the cosine schedule are on by default; pinned off
    # like batch norm, so these tests train what they trained before the default changed.
    # Their own tests are tests/test_augment.py and tests/test_levers.py.
    "lr_schedule": "constant",
    "augment_scale": 0.0,
    "augment_grayscale": 0.0,
    "augment_brightness": 0.0,
    "augment_contrast": 0.0,
    "augment_saturation": 0.0,
    "augment_blur": 0.0,
}


def pytest_report_header() -> str:
    """Numerics differ between CPUs: a failing run says which one it ran on."""
    return f"cpu: {cpu_name()}; {' '.join(native_features()) or 'no AVX2'}"


def venv_bin() -> Path:
    """The folder of the running interpreter's scripts (dvc, prefect) for subprocesses."""
    return Path(sys.executable).parent


def project_env() -> dict[str, str]:
    """Environment for a subprocess that runs the project's commands."""
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("GIT_AUTHOR_NAME", "agegap tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@agegap.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "agegap tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@agegap.invalid")
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command in ``cwd`` with the project on the path; output captured as text."""
    result = subprocess.run(
        args, cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def write_params(folder: Path, **overrides: Any) -> dict[str, Any]:
    """Rewrite ``folder/params.yaml`` with ``overrides`` (keys must already exist)."""
    path = folder / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    unknown = set(overrides) - set(params)
    assert not unknown, f"unknown params {unknown}"
    params.update(overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return params


@pytest.fixture
def synthetic_zip(tmp_path: Path) -> SyntheticArchive:
    """A synthetic LAG zip with all the quirks (see tests/synthetic.py)."""
    return make_archive(tmp_path / "archives" / "LAGdataset_100.zip")


def copy_project(folder: Path, archive: Path, **params: Any) -> Path:
    """Copy the project's tracked files into ``folder`` as a fresh, committed git repo.

    ``data_url`` points at ``archive``; FAST_PARAMS and then ``params`` are applied, so
    ``dvc repro`` and ``dvc exp run`` work there at once.
    """
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for relative in filter(None, tracked):
        source = REPO / relative
        if source.is_file():
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    write_params(folder, data_url=str(archive), **{**FAST_PARAMS, **params})
    run(["git", "init", "-q", "-b", "main"], folder)
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-q", "-m", "test project"], folder)
    return folder


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """``make_project(archive, name="project", **params)``: :func:`copy_project` in tmp_path."""

    def make(archive: Path, name: str = "project", **params: Any) -> Path:
        return copy_project(tmp_path / name, archive, **params)

    return make


@dataclass(frozen=True)
class Reproduced:
    """A synthetic project after one full ``dvc repro``, and what DVC printed."""

    folder: Path
    stdout: str

    def copy(self, target: Path) -> Path:
        """A private copy (with its DVC cache and git history) for a test that changes it."""
        shutil.copytree(self.folder, target, symlinks=True)
        return target


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Reproduced:
    """One full ``dvc repro`` shared by the end-to-end tests: read it, or ``.copy()`` it.

    30 identities with two images of each age: enough for every split's quota, and the
    synthetic faces are learnt well above chance in FAST_PARAMS' five epochs.
    """
    base = tmp_path_factory.mktemp("reproduced")
    archive = make_archive(base / "LAGdataset_100.zip", identities=30, per_class=2)
    folder = copy_project(base / "project", archive.path)
    return Reproduced(folder, run(["dvc", "repro"], folder).stdout)


@pytest.fixture(scope="session")
def real_archive() -> Path:
    """The real LAG archive, or a skip that says where it was looked for."""
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"the real LAG archive is not at {REAL_ARCHIVE} (licensed; not in the repo)")
    return REAL_ARCHIVE


@pytest.fixture
def restore_globals() -> Iterator[None]:
    """``configure`` sets process-wide state: the precision policy and op determinism."""
    import keras

    policy = keras.mixed_precision.global_policy().name
    determinism = None
    if keras.backend.backend() == "tensorflow":
        # Not in tf.config's public API; the switch lives in the same module as enable.
        from tensorflow.python.framework import config as tf_config

        determinism = tf_config.is_op_determinism_enabled()
    yield
    keras.mixed_precision.set_global_policy(policy)
    if determinism is False:
        tf_config.disable_op_determinism()
