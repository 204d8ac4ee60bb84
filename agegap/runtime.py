"""Seeds, determinism and numeric precision: the settings a training run starts with."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import keras

from agegap.params import Params


@functools.cache
def cpu_has_amx() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (Intel AMX, Sapphire Rapids on)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "amx_bf16" in flags


def has_gpu() -> bool:
    """Whether the active Keras backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False


def resolve_precision(requested: str) -> str:
    """``auto`` means bfloat16 where the hardware has it (a GPU, or a CPU with AMX)."""
    if requested != "auto":
        return requested
    return "mixed_bfloat16" if has_gpu() or cpu_has_amx() else "float32"


def configure(params: Params) -> dict[str, str | bool]:
    """Seed every generator, set determinism and the precision policy; say what was set."""
    keras.utils.set_random_seed(params.seed)
    deterministic = False
    if params.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        deterministic = True
    precision = resolve_precision(params.precision)
    keras.mixed_precision.set_global_policy(precision)
    return {
        "backend": keras.backend.backend(),
        "precision": precision,
        "deterministic": deterministic,
        "device": "gpu" if has_gpu() else "cpu",
        "cpu_threads": str(os.cpu_count()),
    }
