"""Where a training step's time goes, kernel by kernel, and what the fastest kernels would
allow: oneDNN's own timing of every primitive it runs (``ONEDNN_VERBOSE=profile_exec``),
per training step, with each convolution's and matrix product's GFLOP/s, beside the
step's wall time from a run without the profiler, and the CPU's matrix-product peak.

It answers the question ``bench/train_throughput.py`` leaves open: when the network trains
far below the hardware ceiling, is it the pipeline around the network or a kernel inside
it, and how far would a faster kernel go? Method and figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import (
    DEFAULT_ARCHIVE,
    SIDE_NAMES,
    child_env,
    machine,
    random_split,
    real_split,
    run_child,
)

PROFILED_SIDES = ("project", "bare")
VERBOSE_PREFIX = "onednn_verbose,"
# The passes of a training step; validation's forward_inference runs outside it.
TRAINING_PASSES = ("forward_training", "backward_data", "backward_weights", "backward", "undef")


@dataclass(frozen=True)
class Primitive:
    """One kind of oneDNN call: what it computes, on which shapes, by which kernel."""

    kind: str  # convolution, matmul, gemm_api, reorder, pooling, ...
    pass_: str  # forward_training, backward_weights, ...
    kernel: str  # oneDNN's implementation name, e.g. jit:avx2
    problem: str  # oneDNN's shape string

    @property
    def batch(self) -> int | None:
        """The batch of a convolution, pooling or inner product (``mb16...``), else None."""
        found = re.search(r"(?<![a-z])mb(\d+)", self.problem)
        return int(found.group(1)) if found else None

    @property
    def flops(self) -> float:
        """FLOPs of one call (a multiply-add is 2); 0 for calls that multiply nothing."""
        if self.kind in ("convolution", "deconvolution"):
            return _convolution_flops(self.problem)
        if self.kind in ("matmul", "gemm_api"):
            return _matmul_flops(self.problem)
        if self.kind == "inner_product":
            sizes = dict(re.findall(r"(mb|ic|oc|ih|iw|kh|kw)(\d+)", self.problem))
            spatial = int(sizes.get("ih", 1)) * int(sizes.get("iw", 1))
            return 2.0 * int(sizes["mb"]) * int(sizes["ic"]) * spatial * int(sizes["oc"])
        return 0.0


def _convolution_flops(problem: str) -> float:
    """``mb16_ic32oc32_ih49oh47kh3..._iw49ow47kw3...`` (``g`` groups optional)."""
    def size(name: str, default: int | None = None) -> int:
        found = re.search(rf"(?<![a-z]){name}(\d+)", problem)
        if found is None:
            if default is None:
                raise ValueError(f"no {name} in convolution problem {problem!r}")
            return default
        return int(found.group(1))

    groups = size("g", 1)
    depth = size("od", 1) * size("kd", 1)
    return (2.0 * size("mb") * (size("ic") // groups) * size("oc") * size("oh") * size("ow")
            * size("kh") * size("kw") * depth)


def _matmul_flops(problem: str) -> float:
    """``16x6400:6400x64`` (leading batch dimensions allowed)."""
    source, weights = problem.split(":")[:2]
    rows = [int(x) for x in source.split("x")]
    columns = [int(x) for x in weights.split("x")]
    return 2.0 * math.prod(rows[:-1]) * rows[-1] * columns[-1]


def parse_profile(lines: Iterable[str]) -> dict[Primitive, list[float]]:
    """Primitive -> the milliseconds of each of its calls, in order, from
    ``ONEDNN_VERBOSE=profile_exec`` output."""
    calls: dict[Primitive, list[float]] = {}
    for line in lines:
        if not line.startswith(VERBOSE_PREFIX):
            continue
        fields = line.rstrip("\n").split(",")
        # onednn_verbose,[timestamp,]v1,primitive,exec,cpu,KIND,KERNEL,PASS,...,PROBLEM,MS
        try:
            at = fields.index("primitive")
        except ValueError:
            continue
        if fields[at + 1] != "exec" or len(fields) < at + 8:
            continue
        primitive = Primitive(kind=fields[at + 3], kernel=fields[at + 4],
                              pass_=fields[at + 5], problem=fields[-2])
        calls.setdefault(primitive, []).append(float(fields[-1]))
    return calls


@dataclass(frozen=True)
class StepKernels:
    """The kernels of one training step: milliseconds and calls per step of each."""

    milliseconds: dict[Primitive, float]
    calls: dict[Primitive, float]


def per_step(calls: dict[Primitive, list[float]], epochs: int, steps_per_epoch: int,
             batch: int) -> StepKernels:
    """The kernels of the training steps, the first epoch left out as in the wall times
    (it also holds one-time work: tracing, weight reorders). Each kernel runs as often in
    every epoch, so its first calls are the first epoch's. Validation runs its layers at its
    own batch size (TensorFlow calls that ``forward_training`` too), so a layer's call
    counts only at the training batch."""
    kept = epochs - 1 if epochs > 1 else 1
    steps = kept * steps_per_epoch
    milliseconds: dict[Primitive, float] = {}
    counts: dict[Primitive, float] = {}
    for primitive, times in calls.items():
        if primitive.pass_ not in TRAINING_PASSES or primitive.batch not in (None, batch):
            continue
        timed = times[len(times) - len(times) * kept // epochs:] if epochs > 1 else times
        milliseconds[primitive] = sum(timed) / steps
        counts[primitive] = len(timed) / steps
    return StepKernels(milliseconds, counts)


# --------------------------------------------------------------------------- the bound


@dataclass(frozen=True)
class StepBudget:
    """One side's training step under the profiler: its wall time, and each kernel's
    milliseconds and calls per step."""

    wall_ms: float
    kernels: StepKernels

    def milliseconds(self, kind: str | None = None, pass_: str | None = None,
                     multiplies: bool | None = None) -> float:
        return sum(self.kernels.milliseconds[p] for p in self._select(kind, pass_, multiplies))

    def flops(self, kind: str | None = None, pass_: str | None = None,
              multiplies: bool | None = None) -> float:
        return sum(p.flops * self.kernels.calls[p] for p in self._select(kind, pass_, multiplies))

    def _select(self, kind: str | None, pass_: str | None,
                multiplies: bool | None) -> list[Primitive]:
        return [p for p in self.kernels.milliseconds
                if (kind is None or p.kind == kind) and (pass_ is None or p.pass_ == pass_)
                and (multiplies is None or (p.flops > 0) == multiplies)]

    def speedups(self, peak_gflops: float) -> dict[str, float]:
        """How much faster the step would run (a) with the convolutions' weight gradients
        at their forward pass's GFLOP/s, (b) with every matrix-multiplying kernel at the
        matrix-product peak, everything else unchanged.

        TensorFlow runs independent kernels at once (a layer's two gradients), so their
        times can add up to more than the step's: a kernel's millisecond then counts for
        its share of the wall time. At the peak the cores are full, so (b) adds the FLOPs'
        time at the peak without that share: it never exceeds the ceiling."""
        overlap = min(1.0, self.wall_ms / max(self.milliseconds(), 1e-9))
        forward_rate = (self.flops("convolution", "forward_training")
                        / max(self.milliseconds("convolution", "forward_training"), 1e-9))
        weights_ms = self.milliseconds("convolution", "backward_weights")
        weights_at_forward_rate = min(
            weights_ms, self.flops("convolution", "backward_weights") / max(forward_rate, 1e-9))
        as_forward = self.wall_ms - (weights_ms - weights_at_forward_rate) * overlap
        at_peak = (self.wall_ms - self.milliseconds(multiplies=True) * overlap
                   + self.flops(multiplies=True) / (peak_gflops * 1e6))
        return {
            "weight_gradients_as_fast_as_forward": self.wall_ms / as_forward,
            "every_product_at_peak": self.wall_ms / min(self.wall_ms, at_peak),
        }


def median_budget(walls_ms: list[float], rounds: list[StepKernels]) -> StepBudget:
    """Each kernel's median over the rounds, and the median wall time."""
    primitives = set().union(*(r.milliseconds for r in rounds))
    return StepBudget(
        statistics.median(walls_ms),
        StepKernels(
            {p: statistics.median(r.milliseconds.get(p, 0.0) for r in rounds) for p in primitives},
            {p: next(r.calls[p] for r in rounds if p in r.calls) for p in primitives},
        ),
    )


# --------------------------------------------------------------------------- the run


def profile_side(side: str, work: Path, common: list[str], batch: int, epochs: int,
                 steps_per_epoch: int, env: dict[str, str]) -> tuple[float, float, StepKernels]:
    """One side run twice: plain, then under the profiler. Its images/s in each, and the
    kernels of the profiled run."""
    child = ["--child", side, "--batch-size", str(batch), *common]
    plain = run_child(child, env, work)
    profiled = run_child(child, {**env, "ONEDNN_VERBOSE": "profile_exec"}, work)
    with (work / "child.out").open(errors="replace") as out:
        calls = parse_profile(out)
    if not calls:
        raise SystemExit(f"{side}: oneDNN printed no profile: is TensorFlow running its "
                         "oneDNN kernels (TF_ENABLE_ONEDNN_OPTS)?")
    return (plain["images_per_second"], profiled["images_per_second"],
            per_step(calls, epochs, steps_per_epoch, batch))


def _rate(flops: float, milliseconds: float) -> str:
    return f"{flops / milliseconds / 1e6:.0f}" if flops and milliseconds else "-"


def report(side: str, plain: list[float], profiled: list[float], rounds: list[StepKernels],
           batch: int, peak: float, ceiling: float, top: int) -> list[str]:
    """Markdown: the kernels of one side by time per step (medians of the rounds), then
    what faster kernels would allow, applied to the plain runs' speed."""
    budget = median_budget([batch / x * 1000.0 for x in profiled], rounds)
    onednn = budget.milliseconds()
    speed = statistics.median(plain)
    lines = [
        "",
        f"### {SIDE_NAMES[side]}, batch {batch}",
        "",
        f"plain runs: {speed:.1f} images/s (median of rounds: "
        + ", ".join(f"{x:.1f}" for x in plain)
        + f"); under the profiler {statistics.median(profiled):.1f}, a step of "
        f"{budget.wall_ms:.1f} ms: oneDNN's kernels {onednn:.1f} ms, the rest (other "
        f"operations, the pipeline, the profiler's printing) {budget.wall_ms - onednn:.1f} ms",
        "",
        "| kernel | pass | implementation | shape | ms/step | share of the step | GFLOP/s |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    ranked = sorted(budget.kernels.milliseconds.items(), key=lambda item: -item[1])
    for primitive, ms in ranked[:top]:
        lines.append(
            f"| {primitive.kind} | {primitive.pass_} | {primitive.kernel} | {primitive.problem} "
            f"| {ms:.2f} | {ms / budget.wall_ms:.0%} | "
            f"{_rate(primitive.flops * budget.kernels.calls[primitive], ms)} |")
    rest = sum(ms for _, ms in ranked[top:])
    if rest:
        lines.append(f"| {len(ranked) - top} others | | | | {rest:.2f} | "
                     f"{rest / budget.wall_ms:.0%} | |")
    lines += ["", "| by pass | ms/step | share of the step | GFLOP/s |", "|---|---:|---:|---:|"]
    for kind, pass_ in sorted({(p.kind, p.pass_) for p in budget.kernels.milliseconds},
                              key=lambda kp: -budget.milliseconds(*kp)):
        ms = budget.milliseconds(kind, pass_)
        lines.append(f"| {kind} {pass_} | {ms:.2f} | {ms / budget.wall_ms:.0%} | "
                     f"{_rate(budget.flops(kind, pass_), ms)} |")
    faster = budget.speedups(peak)
    as_forward = speed * faster["weight_gradients_as_fast_as_forward"]
    at_peak = speed * faster["every_product_at_peak"]
    lines += [
        "",
        f"images/s, and share of the {ceiling:.0f} images/s ceiling:",
        f"- as measured (plain runs): {speed:.0f} ({speed / ceiling:.0%})",
        "- if the convolutions' weight gradients ran at their forward pass's GFLOP/s: "
        f"{as_forward:.0f} ({as_forward / ceiling:.0%})",
        "- if every convolution and matrix product ran at the matrix-product peak, the rest "
        f"unchanged: {at_peak:.0f} ({at_peak / ceiling:.0%})",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", nargs="+", choices=PROFILED_SIDES, default=list(PROFILED_SIDES),
                        help="project: the blog recipe on the project's path; bare: the "
                        "network alone on tensors in memory")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images-per-epoch", type=int, default=1200)
    parser.add_argument("--data", choices=("auto", "real", "random"), default="auto")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--top", type=int, default=12, help="kernels listed one by one")
    args = parser.parse_args(argv)
    if args.images_per_epoch < args.batch_size:
        parser.error("--images-per-epoch must hold at least one batch")

    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine().items()))
    env = child_env()
    use_real = args.data == "real" or (args.data == "auto" and args.archive.is_file())
    if args.data == "real" and not args.archive.is_file():
        raise SystemExit(f"{args.archive}: no such archive")
    steps_per_epoch = args.images_per_epoch // args.batch_size
    plain: dict[str, list[float]] = {side: [] for side in args.sides}
    profiled: dict[str, list[float]] = {side: [] for side in args.sides}
    kernels: dict[str, list[StepKernels]] = {side: [] for side in args.sides}
    peaks: list[float] = []
    with tempfile.TemporaryDirectory(prefix="agegap-profile-") as tmp:
        work = Path(tmp)
        np.savez(work / "arrays.npz", **(real_split(args.archive) if use_real else random_split()))
        print(f"data: {'real LAG' if use_real else 'random uint8 bytes'}; {args.epochs} epochs "
              f"of {args.images_per_epoch} images per run, the first not timed; {args.rounds} "
              "alternating rounds")
        common = ["--workdir", str(work), "--epochs", str(args.epochs),
                  "--images-per-epoch", str(args.images_per_epoch)]
        for round_index in range(args.rounds):
            order = args.sides if round_index % 2 == 0 else args.sides[::-1]
            for side in order:
                speed, under_profiler, step = profile_side(
                    side, work, common, args.batch_size, args.epochs, steps_per_epoch, env)
                plain[side].append(speed)
                profiled[side].append(under_profiler)
                kernels[side].append(step)
                print(f"  round {round_index + 1} {side}: {speed:.1f} images/s, "
                      f"{under_profiler:.1f} under the profiler, oneDNN's kernels "
                      f"{sum(step.milliseconds.values()):.1f} ms per step", flush=True)
            peaks.append(run_child(["--child", "matmul", *common], env, work)["gflops"])
    flops = flops_per_image(kernels, args.batch_size)
    peak = statistics.median(peaks)
    ceiling = peak * 1e9 / flops
    print(f"\nmatrix-product peak: {peak:.0f} GFLOP/s (rounds: "
          + ", ".join(f"{x:.0f}" for x in peaks)
          + f"); FLOPs per training image in oneDNN's multiplying kernels: {flops / 1e9:.3f} "
          f"GFLOP; ceiling {ceiling:.0f} images/s")
    for side in args.sides:
        print("\n".join(report(side, plain[side], profiled[side], kernels[side],
                               args.batch_size, peak, ceiling, args.top)))


def flops_per_image(kernels: dict[str, list[StepKernels]], batch: int) -> float:
    """FLOPs per training image, from the shapes oneDNN was called with (the bare side's
    when profiled: its network is the project's without the augmentation)."""
    step = (kernels.get("bare") or next(iter(kernels.values())))[0]
    return sum(p.flops * n for p, n in step.calls.items()) / batch


if __name__ == "__main__":
    main()
