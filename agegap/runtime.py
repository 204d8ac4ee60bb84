"""Seeds, determinism and numeric precision: the settings a training run starts with."""

from __future__ import annotations

import os

import keras

from agegap.machine import cpu_has_amx
from agegap.params import Params


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


def accelerator_name() -> str:
    """The GPU's name as the active backend reports it, or ``"cpu"``: benchmarks name it."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return gpus[0].device_kind if gpus else "cpu"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return str(details.get("device_name", gpus[0].name))
            return "cpu"
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # a name is nice to have, never worth a failed run
        return "unknown"
    return "cpu"


def resolve_precision(requested: str) -> str:
    """``auto`` means bfloat16 where the hardware and the backend make it fast.

    That is any GPU, or a CPU with AMX under TensorFlow, whose oneDNN kernels run bf16
    convolutions on the AMX tiles (about 1.9x float32 for this network). XLA's CPU
    backend (JAX, or TensorFlow with ``jit_compile=True``) has no such kernels: there
    bf16 was slower than float32 (20 vs 27 images/s under JAX on the same AMX CPU, see
    docs/performance.md), so ``auto`` stays float32 on a CPU under other backends.
    """
    if requested != "auto":
        return requested
    if has_gpu():
        return "mixed_bfloat16"
    if cpu_has_amx() and keras.backend.backend() == "tensorflow":
        return "mixed_bfloat16"
    return "float32"


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
        "accelerator": accelerator_name(),
        "cpu_threads": str(os.cpu_count()),
    }
