"""The CPU this process runs on, read once from /proc/cpuinfo: benchmarks name it, and
``precision: auto`` asks it what the hardware multiplies natively. Free of Keras, so that
scripts can name the machine without importing a backend."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's entries in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    entries: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        entries.setdefault(key.strip(), value.strip())
    return entries


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_name() -> str:
    """The CPU's model and core count: every measured figure names the machine."""
    model = _cpuinfo().get("model name") or platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


# The instruction sets that decide which kernels oneDNN runs, and so the last digits.
NUMERIC_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def native_features() -> tuple[str, ...]:
    """Which of :data:`NUMERIC_FEATURES` this CPU has."""
    flags = cpu_flags()
    return tuple(feature for feature in NUMERIC_FEATURES if feature in flags)


# oneDNN's instruction-set levels as ``ONEDNN_MAX_CPU_ISA`` names them, lowest first
# (an AVX10 name is an alias of the AVX-512 level on the same line).
ONEDNN_ISA_LEVELS = (
    ("SSE41",), ("AVX",), ("AVX2",), ("AVX2_VNNI",), ("AVX2_VNNI_2",), ("AVX512_CORE",),
    ("AVX512_CORE_VNNI",), ("AVX512_CORE_BF16",), ("AVX512_CORE_FP16", "AVX10_1_512"),
    ("AVX512_CORE_AMX", "AVX10_1_512_AMX"), ("AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16"),
)
# Where oneDNN multiplies bfloat16 in hardware: the CPU flag and the ISA level it needs.
# Below AVX512_CORE_BF16 oneDNN converts bfloat16 to float32 and back around every
# product (slower than float32), and with AVX2 alone it has no bfloat16 matmul at all.
BFLOAT16_UNITS = (("amx_bf16", "AVX512_CORE_AMX"), ("avx512_bf16", "AVX512_CORE_BF16"))


def onednn_isa_cap() -> str | None:
    """The ``ONEDNN_MAX_CPU_ISA`` this process runs under, or None where oneDNN is not capped.

    The cap lets one machine imitate an older CPU (say, one without AMX) in measurements.
    """
    value = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return value if value and value not in ("ALL", "DEFAULT") else None


def _isa_level(name: str) -> int:
    for level, names in enumerate(ONEDNN_ISA_LEVELS):
        if name in names:
            return level
    return len(ONEDNN_ISA_LEVELS)  # a newer level than this table knows: no cap below it


def bfloat16_unit() -> str | None:
    """The CPU feature with which oneDNN multiplies bfloat16 natively here (``amx_bf16``
    or ``avx512_bf16``), or None: none, or ``ONEDNN_MAX_CPU_ISA`` caps it away."""
    flags, cap = cpu_flags(), onednn_isa_cap()
    for flag, level in BFLOAT16_UNITS:
        if flag in flags and (cap is None or _isa_level(cap) >= _isa_level(level)):
            return flag
    return None
