"""agegap turns TensorFlow's oneDNN kernels on wherever the user has not chosen: TensorFlow
itself leaves them off on CPUs without VNNI, bfloat16 or AMX (AVX2 ones, for example), where
its Eigen kernels train the network far slower (docs/performance.md)."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.train_throughput import ONEDNN_QUESTION
from tests.conftest import REPO

ASK_TENSORFLOW = f"import agegap; {ONEDNN_QUESTION}"


def onednn_after_importing_agegap(user_setting: str | None) -> str:
    """What a fresh process that imports agegap, then TensorFlow, runs its kernels on."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_setting
    done = subprocess.run([sys.executable, "-c", ASK_TENSORFLOW], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    return done.stdout.split()[-1]


def test_importing_agegap_turns_onednn_on_on_every_cpu() -> None:
    assert onednn_after_importing_agegap(None) == "True"


def test_the_users_own_setting_wins() -> None:
    assert onednn_after_importing_agegap("0") == "False"
