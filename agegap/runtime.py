"""Seeds, determinism and numeric precision: the settings a training run starts with."""

from __future__ import annotations

import os

import keras

from agegap.machine import bfloat16_unit, cpu_name, native_features, onednn_isa_cap
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


def choose_precision(requested: str) -> tuple[str, str]:
    """The precision policy for ``requested``, and why, in words recorded with the run.

    ``auto`` means bfloat16 where the hardware and the backend make it fast: any GPU, or
    a CPU whose oneDNN kernels multiply bfloat16 natively (AMX or ``avx512_bf16``) under
    TensorFlow. XLA's CPU backend (JAX) has no such kernels, so ``auto`` stays float32 on
    a CPU under other backends; docs/performance.md has the measurements.
    """
    if requested != "auto":
        return requested, "set in params.yaml"
    if has_gpu():
        return "mixed_bfloat16", "auto: a GPU"
    backend = keras.backend.backend()
    unit = bfloat16_unit()
    if unit is None:
        cap = onednn_isa_cap()
        capped = f" under ONEDNN_MAX_CPU_ISA={cap}" if cap else ""
        return "float32", f"auto: the CPU has no native bfloat16 (amx_bf16, avx512_bf16){capped}"
    if backend != "tensorflow":
        return "float32", f"auto: the CPU has {unit} but the {backend} backend does not use it"
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return "float32", f"auto: the CPU has {unit} but TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off"
    return "mixed_bfloat16", f"auto: the CPU multiplies bfloat16 natively ({unit}) under tensorflow"


def configure(params: Params) -> dict[str, str | bool]:
    """Seed every generator, set determinism and the precision policy; say what was set
    and on what: the numbers reproduce to the last digit only on the same kind of CPU."""
    keras.utils.set_random_seed(params.seed)
    deterministic = False
    if params.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        deterministic = True
    precision, reason = choose_precision(params.precision)
    keras.mixed_precision.set_global_policy(precision)
    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "precision": precision,
        "precision_reason": reason,
        "deterministic": deterministic,
        "device": "gpu" if has_gpu() else "cpu",
        "accelerator": accelerator_name(),
        "cpu": cpu_name(),
        "cpu_features": " ".join(native_features()),
    }
