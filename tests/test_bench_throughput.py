"""bench/train_throughput.py: the FLOPs it counts, the ceiling and shares it prints, and
one short real run of every side."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import agegap
from agegap.model import build_model
from agegap.params import Params
from tests.conftest import REPO

BENCH = REPO / "bench" / "train_throughput.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_flops_are_counted_from_the_layers() -> None:
    """The blog's network, counted by hand: three 5x5 convolutions ('same', each followed
    by 2x2 pooling) and two dense layers; multiply-adds count 2 FLOPs."""
    model = build_model(Params(augment_cutout=0.0))
    conv = [100 * 100 * 32 * 25 * 3, 50 * 50 * 32 * 25 * 32, 25 * 25 * 64 * 25 * 32]
    dense = [12 * 12 * 64 * 64, 64 * 1]
    forward = 2 * (sum(conv) + sum(dense))
    flops = load_bench().training_flops(model)
    assert flops["forward"] == forward == flops["weight_gradients"]
    assert flops["input_gradients"] == forward - 2 * conv[0]  # the image needs no gradient
    assert flops["total"] == 3 * forward - 2 * conv[0]
    assert round(flops["total"] / 1e9, 2) == 0.68


def row(side: str, images_per_second: float, round_index: int = 1, **extra) -> dict:
    return {"round": round_index, "side": side, "batch": 16, "augment": side != "bare",
            "images_per_second": images_per_second, "best_epoch_images_per_second":
            images_per_second, "cpu_ms_per_image": 4.0, "seconds_per_epoch": 3.0,
            "peak_rss_mb": 1000.0, **extra}


def test_the_summary_gives_the_ceiling_and_each_sides_share() -> None:
    bench = load_bench()
    flops = {"forward": 2e8, "weight_gradients": 2e8, "input_gradients": 1e8, "total": 5e8}
    rows = [
        row("project", 400.0), row("blog", 100.0), row("bare", 500.0, flops_per_image=flops),
        {"round": 1, "side": "matmul", "batch": 16, "augment": False, "gflops": 300.0,
         "gflops_median": 290.0, "dtype": "bfloat16", "size": 2048},
        row("project", 420.0, 2), row("blog", 105.0, 2),
        row("bare", 480.0, 2, flops_per_image=flops),
        {"round": 2, "side": "matmul", "batch": 16, "augment": False, "gflops": 200.0,
         "gflops_median": 190.0, "dtype": "bfloat16", "size": 2048},
    ]
    text = bench.summary(rows)
    # The peak is the median of the rounds' peaks, 250; the ceiling is 250 / 0.5 per image.
    assert "hardware ceiling: 500 images/s (250 GFLOP/s / 0.500 GFLOP per image)" in text
    assert "| (a) project, blog recipe | 16 | on | 410 | 82% | 84% |" in text
    assert "| bare network, arrays in memory | 16 | off | 490 | 98% | 100% |" in text
    assert "ratio (a)/(b), images/s at batch 16 with augmentation: 4.00" in text


@pytest.mark.slow
def test_a_short_run_measures_every_side() -> None:
    """Random bytes, a few images per epoch: each side runs in its own process and the
    summary holds the ceiling; the figures themselves are not checked (timings vary)."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--data", "random", "--epochs", "2",
         "--images-per-epoch", "32", "--repeats", "1", "--no-blog"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("round 1 project", "round 1 default", "round 1 bare", "round 1 matmul",
                 "FLOPs per training image, counted from the model: 0.676 GFLOP",
                 "hardware ceiling:", "| (d) project, default recipe | 16 | on |"):
        assert line in result.stdout


def test_the_blog_loop_keeps_tensorflows_own_onednn_setting(monkeypatch) -> None:
    """agegap's import turns oneDNN on in every child; the blog's loop gets back the value
    the blog's script would run with: the user's, else TensorFlow's default for the CPU."""
    bench = load_bench()
    monkeypatch.setattr(agegap, "USER_ONEDNN_SETTING", "0")
    assert bench.blog_onednn() == "0"
    assert bench.onednn_sides().startswith("TF_ENABLE_ONEDNN_OPTS=0 on every side")
    monkeypatch.setattr(agegap, "USER_ONEDNN_SETTING", None)
    assert bench.blog_onednn() == ("1" if bench.tensorflow_onednn_default() else "0")
    assert bench.onednn_sides().startswith("on for the project (agegap's default)")
