"""bench/step_profile.py: how it reads oneDNN's profile, the FLOPs it gives each kernel,
the bounds it draws from them, and one short real run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench" / "step_profile.py"

# Lines as oneDNN 3.7 prints them under ONEDNN_VERBOSE=profile_exec (TensorFlow 2.21, AVX2),
# with the memory descriptors shortened.
HEAD = "onednn_verbose,v1,primitive,exec,cpu"
MEMORY = "src:f32::blocked:acdb::f0 wei:f32:a:blocked:ABcd8b8a::f0 dst:f32::blocked:acdb::f0"
CONV2_SHAPE = "mb16_ic32oc32_ih49oh47kh3sh1dh0ph0_iw49ow47kw3sw1dw0pw0"
PROFILE = [
    "onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
    "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,"
    "prop_kind,memory_descriptors,attributes,auxiliary,problem_desc,exec_time",
    f"{HEAD},reorder,jit:uni,undef,{MEMORY},,,32x32x3x3,0.25",
    f"{HEAD},convolution,brg_conv_fwd:avx2,forward_training,{MEMORY},attr-scratchpad:user,"
    f"alg:convolution_direct,{CONV2_SHAPE},12.5",
    f"{HEAD},convolution,jit:avx2,backward_weights,{MEMORY},,alg:convolution_direct,"
    f"{CONV2_SHAPE},25.0",
    f"{HEAD},convolution,jit:avx2,backward_weights,{MEMORY},,alg:convolution_direct,"
    f"{CONV2_SHAPE},27.0",
    f"{HEAD},convolution,brg_conv_fwd:avx2,forward_inference,{MEMORY},,alg:convolution_direct,"
    f"{CONV2_SHAPE},9.0",
    f"{HEAD},gemm_api,,undef,src_f32::blocked:ab:f0 wei_f32::blocked:ab:f0,,,64x128:128x32,0.5",
    "some other line a child printed",
]

CONV2 = 2.0 * 16 * 32 * 32 * 47 * 47 * 3 * 3  # multiply-adds of conv2 at batch 16, times 2


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_step_profile", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def test_the_profile_is_read_per_kernel_and_shape() -> None:
    calls = bench.parse_profile(PROFILE)
    by_pass = {(p.kind, p.pass_, p.kernel): times for p, times in calls.items()}
    assert by_pass[("convolution", "backward_weights", "jit:avx2")] == [25.0, 27.0]
    assert by_pass[("convolution", "forward_training", "brg_conv_fwd:avx2")] == [12.5]
    assert by_pass[("reorder", "undef", "jit:uni")] == [0.25]
    assert len(calls) == 5


def test_a_step_leaves_out_the_first_epoch_and_validation() -> None:
    """Two epochs of two steps: each kernel's first half of calls is the first epoch's;
    validation's layers run at its own batch, whatever oneDNN calls the pass."""
    weights = bench.Primitive("convolution", "backward_weights", "jit:avx2", CONV2_SHAPE)
    reorder = bench.Primitive("reorder", "undef", "jit:uni", "32x32x3x3")
    validation = bench.Primitive("convolution", "forward_training", "brg_conv_fwd:avx2",
                                 CONV2_SHAPE.replace("mb16", "mb256"))
    inference = bench.Primitive("convolution", "forward_inference", "brg", CONV2_SHAPE)
    calls = {weights: [90.0, 30.0, 20.0, 22.0], reorder: [5.0, 1.0, 1.0, 1.0, 1.0, 1.0],
             validation: [40.0, 40.0], inference: [9.0, 9.0]}
    step = bench.per_step(calls, epochs=2, steps_per_epoch=2, batch=16)
    assert step.milliseconds == {weights: pytest.approx(21.0), reorder: pytest.approx(1.5)}
    assert step.calls == {weights: 1.0, reorder: 1.5}


def test_the_flops_of_each_kernel_come_from_its_shape() -> None:
    totals = bench.parse_profile(PROFILE)
    flops = {(p.kind, p.pass_): p.flops for p in totals}
    assert flops[("convolution", "backward_weights")] == CONV2
    assert flops[("convolution", "forward_training")] == CONV2
    assert flops[("gemm_api", "undef")] == 2.0 * 64 * 128 * 32
    assert flops[("reorder", "undef")] == 0.0
    grouped = bench.Primitive("convolution", "forward_training", "x",
                              "mb2_g4ic8oc8_ih5oh5kh1sh1dh0ph0_iw5ow5kw1sw1dw0pw0")
    assert grouped.flops == 2.0 * 2 * (8 // 4) * 8 * 5 * 5
    batched = bench.Primitive("matmul", "undef", "x", "3x16x64:3x64x8")
    assert batched.flops == 2.0 * 3 * 16 * 64 * 8


def test_the_bounds_replace_the_slow_kernels_time_only() -> None:
    """A made-up step of 100 ms: a weight gradient of 2 GFLOP in 40 ms, a forward pass of
    2 GFLOP in 20 ms (twice the rate), pooling and other work; a peak of four times the
    weight gradient's rate."""
    one_multiply_add = "mb1_ic1oc1_ih1oh1kh1sh1dh0ph0_iw1ow1kw1sw1dw0pw0"  # 2 FLOPs a call
    weights = bench.Primitive("convolution", "backward_weights", "jit", one_multiply_add)
    forward = bench.Primitive("convolution", "forward_training", "brg", one_multiply_add)
    pooling = bench.Primitive("pooling", "forward_training", "jit", "mb1ic1_ih2oh1kh2")
    kernels = bench.StepKernels({weights: 40.0, forward: 20.0, pooling: 5.0},
                                {weights: 1e9, forward: 1e9, pooling: 1.0})
    faster = bench.StepBudget(wall_ms=100.0, kernels=kernels).speedups(peak_gflops=200.0)
    # The weight gradient at the forward pass's rate takes 20 ms: an 80 ms step.
    assert faster["weight_gradients_as_fast_as_forward"] == pytest.approx(100 / 80)
    # Both at the peak take 10 ms each: 100 - 60 + 20 = 60 ms; pooling is unchanged.
    assert faster["every_product_at_peak"] == pytest.approx(100 / 60)
    # Kernels that overlap (130 ms of them in a 65 ms step) save half their time: the
    # weight gradient at the forward rate takes 40 of its 80 ms.
    overlapping = bench.StepBudget(wall_ms=65.0, kernels=bench.StepKernels(
        {p: 2 * ms for p, ms in kernels.milliseconds.items()}, kernels.calls))
    faster = overlapping.speedups(peak_gflops=200.0)
    assert faster["weight_gradients_as_fast_as_forward"] == pytest.approx(65 / (65 - 40 * 0.5))
    # At the peak the cores are full: 120 ms of products count 60, their FLOPs take 20 ms.
    assert faster["every_product_at_peak"] == pytest.approx(65 / (65 - 60 + 20))


@pytest.mark.slow
def test_a_short_run_counts_the_networks_flops_from_onednns_calls() -> None:
    """Random bytes, one short round of the bare network: the FLOPs read from oneDNN's
    calls are the model's own count (bench/train_throughput.py's 0.676 GFLOP), so no
    multiplying kernel is missed or counted twice; the timings themselves are not checked."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--data", "random", "--sides", "bare", "--rounds", "1",
         "--epochs", "2", "--images-per-epoch", "32"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ("round 1 bare", "multiplying kernels: 0.676 GFLOP",
                 "| convolution backward_weights |",
                 "if the convolutions' weight gradients ran at their forward pass's GFLOP/s"):
        assert line in result.stdout, result.stdout[-3000:]
